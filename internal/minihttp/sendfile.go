package minihttp

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// sendFile sends the file behind src, an *io.LimitedReader of an *os.File,
// on conn with sendfile, the socket switched to blocking mode for it.
//
// gVisor's sendfile into a socket reads up to 1 MiB of the file, writes what
// the send buffer has room for and, on a non-blocking socket (Go's kind),
// rewinds the file over the rest and fails with EAGAIN: each of the
// writer's wake-ups re-reads whatever did not fit before. On a blocking
// socket the sentry waits for room itself and reads every byte once (100
// MB: the sandbox's CPU 99-140 -> 76-96 ms; docs/density/NOTES.md, "Session
// 12: reading a file").
//
// It returns what it sent (src's limit is lowered by as much) and whether
// it is done: false if src or conn is of another kind, or the socket turned
// out non-blocking after all, and the caller is to send the rest its own way.
func sendFile(conn net.Conn, src io.Reader) (n int64, done bool, err error) {
	lr, ok := src.(*io.LimitedReader)
	if !ok {
		return 0, false, nil
	}
	f, ok := lr.R.(*os.File)
	tc, ok2 := conn.(*net.TCPConn)
	if !ok || !ok2 {
		return 0, false, nil
	}
	fc, err := f.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var serr error
	cerr := sc.Control(func(sfd uintptr) {
		if syscall.SetNonblock(int(sfd), false) != nil {
			return
		}
		defer syscall.SetNonblock(int(sfd), true)
		fc.Control(func(ffd uintptr) {
			for lr.N > 0 {
				m, err := syscall.Sendfile(int(sfd), int(ffd), nil, int(min(lr.N, 1<<30)))
				if m > 0 {
					n += int64(m)
					lr.N -= int64(m)
				}
				switch {
				case errors.Is(err, syscall.EINTR):
				case errors.Is(err, syscall.EAGAIN):
					return // not blocking after all: the caller goes on
				case err != nil:
					done, serr = true, os.NewSyscallError("sendfile", err)
					return
				case m == 0:
					done = true // the file ended early
					return
				}
			}
			done = true
		})
	})
	if cerr != nil {
		return n, true, cerr
	}
	return n, done, serr
}
