package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"syscall"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	frames := []struct {
		t FrameType
		p []byte
	}{
		{FrameStart, []byte(`{"command":"true"}`)},
		{FrameStdin, bytes.Repeat([]byte{0xff}, 70000)},
		{FrameStdinClose, nil},
		{FrameExit, []byte(`{"exit_code":0}`)},
	}
	for _, f := range frames {
		if err := fw.WriteFrame(f.t, f.p); err != nil {
			t.Fatal(err)
		}
	}
	if got := buf.Bytes()[:HeaderSize]; got[0] != byte(FrameStart) || binary.BigEndian.Uint32(got[1:]) != 18 {
		t.Fatalf("header % x", got)
	}
	fr := NewFrameReader(&buf)
	for _, f := range frames {
		typ, p, err := fr.ReadFrame()
		if err != nil || typ != f.t || !bytes.Equal(p, f.p) {
			t.Fatalf("read %v %d bytes %v, want %v %d bytes", typ, len(p), err, f.t, len(f.p))
		}
	}
	if _, _, err := fr.ReadFrame(); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
}

func TestFrameErrors(t *testing.T) {
	var hdr [HeaderSize]byte
	hdr[0] = byte(FrameStdout)
	binary.BigEndian.PutUint32(hdr[1:], MaxPayload+1)
	if _, _, err := NewFrameReader(bytes.NewReader(hdr[:])).ReadFrame(); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized: %v", err)
	}
	binary.BigEndian.PutUint32(hdr[1:], 10)
	trunc := append(hdr[:], 1, 2, 3)
	if _, _, err := NewFrameReader(bytes.NewReader(trunc)).ReadFrame(); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated payload: %v", err)
	}
	if _, _, err := NewFrameReader(bytes.NewReader(hdr[:3])).ReadFrame(); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated header: %v", err)
	}
	if err := NewFrameWriter(io.Discard).WriteFrame(FrameStdin, make([]byte, MaxPayload+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("write oversized: %v", err)
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(b []byte) (int, error) {
	w.n++
	return 0, errors.New("boom")
}

func TestFrameWriterStickyError(t *testing.T) {
	w := &failWriter{}
	fw := NewFrameWriter(w)
	if err := fw.WriteFrame(FrameStdout, []byte("a")); err == nil {
		t.Fatal("no error")
	}
	if err := fw.WriteFrame(FrameStdout, []byte("b")); err == nil || w.n != 1 {
		t.Fatalf("second write: %v, %d writes", err, w.n)
	}
}

// Concurrent writers never interleave inside a frame.
func TestFrameWriterConcurrent(t *testing.T) {
	pr, pw := io.Pipe()
	fw := NewFrameWriter(pw)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i)}, 1000+i)
			for j := 0; j < each; j++ {
				fw.WriteFrame(FrameStdout, p)
			}
		}()
	}
	go func() { wg.Wait(); pw.Close() }()
	fr := NewFrameReader(pr)
	n := 0
	for {
		_, p, err := fr.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		i := int(p[0])
		if len(p) != 1000+i || !bytes.Equal(p, bytes.Repeat([]byte{p[0]}, len(p))) {
			t.Fatalf("corrupt frame of %d bytes", len(p))
		}
		n++
	}
	if n != writers*each {
		t.Fatalf("%d frames, want %d", n, writers*each)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"SIGTERM": syscall.SIGTERM, "TERM": syscall.SIGTERM, "sigkill": syscall.SIGKILL,
		"int": syscall.SIGINT, "9": syscall.SIGKILL, " SIGHUP ": syscall.SIGHUP, "SIGWINCH": syscall.SIGWINCH,
	} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "SIGNOPE", "0", "-1", "65", "TERM9"} {
		if _, err := ParseSignal(in); err == nil {
			t.Errorf("ParseSignal(%q) accepted", in)
		}
	}
}
