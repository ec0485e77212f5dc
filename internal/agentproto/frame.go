package agentproto

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// FrameType is the first byte of a frame.
type FrameType byte

// Frame types. A frame is [1 byte type][4 byte big-endian payload length][payload].
const (
	// Client → agent.
	FrameStart      FrameType = 0x01 // JSON StartRequest; must be the first frame
	FrameStdin      FrameType = 0x02 // raw bytes for the command's stdin
	FrameStdinClose FrameType = 0x03 // empty; closes stdin (on a PTY: sends ^D)
	FrameSignal     FrameType = 0x04 // signal name or number as text, sent to the process group
	FrameResize     FrameType = 0x05 // JSON PTYSize

	// Agent → client.
	FrameStarted FrameType = 0x81 // JSON Started
	FrameStdout  FrameType = 0x82 // raw bytes (PTY output too)
	FrameStderr  FrameType = 0x83 // raw bytes
	FrameExit    FrameType = 0x84 // JSON Exit; last frame
)

func (t FrameType) String() string {
	switch t {
	case FrameStart:
		return "start"
	case FrameStdin:
		return "stdin"
	case FrameStdinClose:
		return "stdin_close"
	case FrameSignal:
		return "signal"
	case FrameResize:
		return "resize"
	case FrameStarted:
		return "started"
	case FrameStdout:
		return "stdout"
	case FrameStderr:
		return "stderr"
	case FrameExit:
		return "exit"
	}
	return fmt.Sprintf("frame(0x%02x)", byte(t))
}

// HeaderSize is the size of a frame header.
const HeaderSize = 5

// MaxPayload is the largest payload either side accepts. Writers split data
// into chunks of at most ChunkSize: what a full pipe holds (64 KiB in gVisor
// and Linux), so a fast command's output goes out in as few frames and TCP
// writes as its pipe allows.
const (
	MaxPayload = 1 << 20
	ChunkSize  = 64 << 10
)

// ErrFrameTooLarge is returned when a frame's declared length exceeds MaxPayload.
var ErrFrameTooLarge = errors.New("agentproto: frame too large")

// FrameWriter writes frames to w. It is safe for concurrent use; each frame
// goes out in a single Write call.
type FrameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
}

// NewFrameWriter returns a FrameWriter writing to w.
func NewFrameWriter(w io.Writer) *FrameWriter {
	return &FrameWriter{w: w}
}

// WriteFrame writes one frame. After a write error every later call returns
// that error.
func (fw *FrameWriter) WriteFrame(t FrameType, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrFrameTooLarge
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.err != nil {
		return fw.err
	}
	n := HeaderSize + len(payload)
	if cap(fw.buf) < n {
		fw.buf = make([]byte, n)
	}
	b := fw.buf[:n]
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:HeaderSize], uint32(len(payload)))
	copy(b[HeaderSize:], payload)
	if _, err := fw.w.Write(b); err != nil {
		fw.err = err
		return err
	}
	if cap(fw.buf) > 2*ChunkSize+HeaderSize {
		fw.buf = nil // don't pin a rare large buffer
	}
	return nil
}

// FrameReader reads frames. It is not safe for concurrent use.
type FrameReader struct {
	r   *bufio.Reader
	hdr [HeaderSize]byte
}

// NewFrameReader returns a FrameReader reading from r; if r is already a
// *bufio.Reader it is used as is.
func NewFrameReader(r io.Reader) *FrameReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &FrameReader{r: br}
}

// ReadFrame reads one frame; the payload is freshly allocated. It returns
// io.EOF only at a clean frame boundary and io.ErrUnexpectedEOF for a
// truncated frame.
func (fr *FrameReader) ReadFrame() (FrameType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[1:])
	if n > MaxPayload {
		return 0, nil, ErrFrameTooLarge
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(fr.r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return FrameType(fr.hdr[0]), payload, nil
}
