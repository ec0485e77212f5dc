package images

import (
	"context"
	"embed"
	"fmt"
	"io"
	"path/filepath"
)

// codeInterpreterPackages are stasis/code-interpreter's Debian packages
// beyond stasis/base's: a Jupyter kernel and the usual data libraries.
// debootstrap does not resolve virtual packages: python3-cffi-backend is
// python3-zmq's "python3-cffi-backend-api-min".
const codeInterpreterPackages = "python3-ipykernel,python3-jupyter-client,python3-matplotlib-inline," +
	"python3-numpy,python3-pandas,python3-matplotlib,python3-cffi-backend"

// CodeInterpreterPort is the port of the code interpreter's server in a
// stasis/code-interpreter sandbox, the one E2B's @e2b/code-interpreter calls.
const CodeInterpreterPort = 49999

// codeInterpreterDir is where the server lives inside the image.
const codeInterpreterDir = "/opt/stasis/code-interpreter"

// codeInterpreterFiles are the server and the kernels' IPython startup file.
//
//go:embed codeinterpreter/server.py codeinterpreter/startup.py
var codeInterpreterFiles embed.FS

// buildCodeInterpreter builds stasis/code-interpreter: stasis/base's Debian
// with ipykernel, numpy, pandas and matplotlib, and the code interpreter's
// server, which every sandbox starts (see config.StartCmd).
func buildCodeInterpreter(ctx context.Context, rootfs string, _ inputs, progress io.Writer) (config, error) {
	cfg, err := buildDebian(ctx, rootfs, "stasis-code-interpreter", basePackages+","+codeInterpreterPackages, progress)
	if err != nil {
		return config{}, err
	}
	fmt.Fprintf(progress, "installing the code interpreter server in %s\n", codeInterpreterDir)
	for _, f := range []string{"server.py", "startup.py"} {
		b, err := codeInterpreterFiles.ReadFile("codeinterpreter/" + f)
		if err != nil {
			return config{}, err
		}
		if err := writeFile(filepath.Join(rootfs, codeInterpreterDir, f), string(b), 0o644); err != nil {
			return config{}, err
		}
	}
	// matplotlib's font list, built now rather than at every sandbox's
	// first plot (it takes seconds).
	fmt.Fprintf(progress, "building matplotlib's font cache\n")
	if err := chrootRun(ctx, rootfs, "/bin/sh", "-c",
		"HOME=/home/user python3 -c 'import matplotlib.pyplot' && chown -R user:user /home/user/.cache"); err != nil {
		return config{}, err
	}
	cfg.StartCmd = fmt.Sprintf("exec python3 %s/server.py --port %d", codeInterpreterDir, CodeInterpreterPort)
	// The server accepts connections once its default context's kernel is
	// up. bash's /dev/tcp probes that without starting a python.
	cfg.ReadyCmd = fmt.Sprintf("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d'", CodeInterpreterPort)
	return cfg, nil
}
