package sandbox

import (
	"bytes"
	"log/slog"
)

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
