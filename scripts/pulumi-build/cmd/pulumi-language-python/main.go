// Command pulumi-language-python is jsb-infra's minimal Pulumi language host
// for Python programs, built by scripts/ensure-pulumi.
//
// Why it exists: the Go module proxy reachable from jsb-infra's machines does
// not serve Pulumi's own language host module
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3), and the
// vendor's download site is unreachable. This host implements the small part
// of the LanguageRuntime gRPC service that `pulumi preview/up/refresh/destroy`
// need, using only the pulumi sdk/v3 module (protocol types and gRPC helpers):
//
//   - Run: starts `<python> -u pulumi-language-python-exec ...` (the exec shim
//     that ships in the sdk/v3 module, placed next to this binary), passing
//     the stack configuration in PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS.
//   - GetRequiredPackages: reports none, so the engine never tries to download
//     plugins (dynamic providers need only pulumi-resource-pulumi-python).
//   - GetPluginInfo, Handshake, About, GetProgramDependencies: trivial answers.
//
// Python is chosen as: the `virtualenv` runtime option of Pulumi.yaml
// (relative to the project root), else $PULUMI_PYTHON_CMD, else the first
// python3 (or python) on PATH. Toolchains other than pip (uv, poetry) and
// `pulumi install` / `pulumi new` are not supported: dependencies are managed
// by the project's own venv.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Exit code the exec shim uses after it has already shown the user an error.
const exitCodeUserActionable = 32

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	execShim      string
	engineAddress string
	tracing       string
}

func main() {
	tracing := flag.String("tracing", "", "Zipkin-compatible tracing endpoint (passed to the program)")
	useExecutor := flag.String("use-executor", "", "path of pulumi-language-python-exec (default: next to this binary)")
	flag.String("root", "", "ignored (accepted for compatibility)")
	flag.Bool("binary", false, "ignored (accepted for compatibility)")
	flag.Parse()

	shim := *useExecutor
	if shim == "" {
		self, err := os.Executable()
		if err != nil {
			fatal("cannot locate own executable: %v", err)
		}
		if resolved, err := filepath.EvalSymlinks(self); err == nil {
			self = resolved
		}
		shim = filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
		if _, err := os.Stat(shim); err != nil {
			if p, lerr := exec.LookPath("pulumi-language-python-exec"); lerr == nil {
				shim = p
			} else {
				fatal("pulumi-language-python-exec not found next to %s nor on PATH", self)
			}
		}
	}

	exitOnInterrupt()

	h := &host{execShim: shim, tracing: *tracing}
	if args := flag.Args(); len(args) > 0 {
		h.engineAddress = args[0]
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, h)
			return nil
		},
	})
	if err != nil {
		fatal("could not start language host RPC server: %v", err)
	}
	// The engine reads the port from our first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fatal("language host RPC stopped serving: %v", err)
	}
}

// exitOnInterrupt ends the host on SIGINT or SIGTERM, also when it was started
// with SIGINT ignored. The engine stops its plugins with an interrupt and waits
// (seconds) before it kills them; a pulumi started with SIGINT ignored (nohup,
// a background job of a non-interactive shell, some CI runners) passes the
// ignored disposition on to its plugins, and Go keeps a signal ignored at start
// unless signal.Notify asks for it (os/signal docs), so without this every
// command would wait out that timeout. Exiting is what the default action of
// either signal would do.
func exitOnInterrupt() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		os.Exit(0)
	}()
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python (jsb-infra): "+format+"\n", args...)
	os.Exit(1)
}

func (h *host) Handshake(
	_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	if h.engineAddress == "" {
		h.engineAddress = req.GetEngineAddress()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *host) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *host) GetProgramDependencies(
	context.Context, *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	return &pulumirpc.GetProgramDependenciesResponse{}, nil
}

func (h *host) About(_ context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	py, _, err := h.python(req.GetInfo())
	if err != nil {
		return nil, err
	}
	out, _ := exec.Command(py, "--version").Output()
	return &pulumirpc.AboutResponse{
		Executable: py,
		Version:    strings.TrimPrefix(strings.TrimSpace(string(out)), "Python "),
	}, nil
}

func (h *host) InstallDependencies(
	*pulumirpc.InstallDependenciesRequest, grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	return status.Error(codes.Unimplemented,
		"jsb-infra's minimal pulumi-language-python does not install dependencies: "+
			"install them into the virtualenv yourself (pip install -e .)")
}

// python returns the interpreter to use and the environment changes that go with it.
func (h *host) python(info *pulumirpc.ProgramInfo) (string, []string, error) {
	opts := info.GetOptions().AsMap()
	if tc, ok := opts["toolchain"].(string); ok && tc != "" && tc != "pip" {
		return "", nil, fmt.Errorf("runtime option toolchain=%q is not supported by jsb-infra's minimal "+
			"pulumi-language-python (use a virtualenv, or python on PATH)", tc)
	}
	if venv, ok := opts["virtualenv"].(string); ok && venv != "" {
		if !filepath.IsAbs(venv) {
			root := info.GetRootDirectory()
			if root == "" {
				root, _ = os.Getwd()
			}
			venv = filepath.Join(root, venv)
		}
		py := filepath.Join(venv, "bin", "python")
		if _, err := os.Stat(py); err != nil {
			return "", nil, fmt.Errorf("the 'virtualenv' runtime option points at %q, which has no bin/python", venv)
		}
		env := []string{
			"VIRTUAL_ENV=" + venv,
			"PATH=" + filepath.Join(venv, "bin") + string(os.PathListSeparator) + os.Getenv("PATH"),
		}
		return py, env, nil
	}
	if cmd := os.Getenv("PULUMI_PYTHON_CMD"); cmd != "" {
		p, err := exec.LookPath(cmd)
		return p, nil, err
	}
	for _, name := range []string{"python3", "python"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil, nil
		}
	}
	return "", nil, errors.New("no python3 or python on PATH (and no 'virtualenv' runtime option in Pulumi.yaml)")
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	py, pyEnv, err := h.python(info)
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}

	args := []string{"-u", h.execShim}
	add := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("project", req.GetProject())
	add("root_directory", info.GetRootDirectory())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", strconv.FormatBool(req.GetDryRun()))
	add("parallel", strconv.Itoa(int(req.GetParallel())))
	add("tracing", h.tracing)
	add("organization", req.GetOrganization())
	entry := info.GetEntryPoint()
	if entry == "" {
		entry = req.GetProgram() //nolint:staticcheck // older engines
	}
	if entry == "" {
		entry = "."
	}
	args = append(args, entry)
	args = append(args, req.GetArgs()...)

	configMap := req.GetConfig()
	if configMap == nil {
		configMap = map[string]string{} // the SDK expects an object, not null
	}
	config, err := json.Marshal(configMap)
	if err != nil {
		return nil, fmt.Errorf("serializing config: %w", err)
	}
	secretKeys := req.GetConfigSecretKeys()
	if secretKeys == nil {
		secretKeys = []string{}
	}
	secretKeysJSON, err := json.Marshal(secretKeys)
	if err != nil {
		return nil, fmt.Errorf("serializing config secret keys: %w", err)
	}

	cmd := exec.CommandContext(ctx, py, args...)
	if dir := info.GetProgramDirectory(); dir != "" {
		cmd.Dir = dir
	} else if req.GetPwd() != "" {
		cmd.Dir = req.GetPwd()
	}
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), pyEnv...)
	cmd.Env = append(cmd.Env,
		"PULUMI_CONFIG="+string(config),
		"PULUMI_CONFIG_SECRET_KEYS="+string(secretKeysJSON),
	)

	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == exitCodeUserActionable {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
			}, nil
		}
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("could not run %s %s: %v", py, h.execShim, err),
		}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}
