package sandbox

import (
	"bytes"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// syncTree fsyncs every regular file and directory under root and returns
// the total size of the files.
func syncTree(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if !d.IsDir() {
			st, err := f.Stat()
			if err != nil {
				return err
			}
			total += st.Size()
		}
		return f.Sync()
	})
	return total, err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// logWriter turns a progress stream (e.g. an image build) into log lines.
type logWriter struct {
	log      *slog.Logger
	template string
	buf      []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	consumed := 0
	for {
		i := bytes.IndexByte(w.buf[consumed:], '\n')
		if i < 0 {
			break
		}
		line := w.buf[consumed : consumed+i]
		consumed += i + 1
		if len(bytes.TrimSpace(line)) > 0 {
			w.log.Info("template build", "template", w.template, "line", string(line))
		}
	}
	w.buf = append(w.buf[:0], w.buf[consumed:]...)
	return len(p), nil
}
