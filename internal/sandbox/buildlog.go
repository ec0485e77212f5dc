package sandbox

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// LogEvent is one line of a template build's log (Superserve's shape).
type LogEvent struct {
	Timestamp time.Time `json:"timestamp"`
	Stream    string    `json:"stream"` // stdout, stderr or system
	Text      string    `json:"text"`
	Finished  bool      `json:"finished,omitempty"`
	Status    string    `json:"status,omitempty"` // final build status, with Finished
}

// maxLogEvents bounds a build log kept in memory; older lines are dropped.
const maxLogEvents = 20000

// buildLog collects a build's output for live followers and the store.
type buildLog struct {
	mu      sync.Mutex
	events  []LogEvent
	dropped int
	done    bool
	changed chan struct{} // closed and replaced on every append
	cancel  context.CancelFunc
}

func (s *Service) buildLog(id string) *buildLog {
	s.logsMu.Lock()
	defer s.logsMu.Unlock()
	l, ok := s.logs[id]
	if !ok {
		l = &buildLog{changed: make(chan struct{})}
		s.logs[id] = l
	}
	return l
}

func (l *buildLog) setCancel(c context.CancelFunc) {
	l.mu.Lock()
	l.cancel = c
	l.mu.Unlock()
}

func (l *buildLog) cancelFunc() context.CancelFunc {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	return l.cancel
}

func (l *buildLog) add(ev LogEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.events = append(l.events, ev)
	if len(l.events) > maxLogEvents {
		l.events = l.events[1:]
		l.dropped++
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *buildLog) stream(name, text string) {
	if text != "" {
		l.add(LogEvent{Timestamp: time.Now().UTC(), Stream: name, Text: text})
	}
}

func (l *buildLog) system(format string, args ...any) {
	l.stream("system", fmt.Sprintf(format, args...)+"\n")
}

func (l *buildLog) finish(status string) {
	l.add(LogEvent{Timestamp: time.Now().UTC(), Stream: "system", Text: "build " + status + "\n", Finished: true, Status: status})
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
}

// writer adapts a stream of the log to io.Writer.
func (l *buildLog) writer(name string) *logStream { return &logStream{l: l, name: name} }

type logStream struct {
	l    *buildLog
	name string
}

func (w *logStream) Write(p []byte) (int, error) {
	w.l.stream(w.name, string(p))
	return len(p), nil
}

func (l *buildLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, ev := range l.events {
		b.WriteString(ev.Text)
	}
	return b.String()
}

// Follow calls fn for every event of the build's log from the start, then
// for new ones as they come, until the build finishes or ctx ends. For a
// build this server did not run (finished before a restart), it replays the
// stored log.
func (s *Service) FollowBuild(ctx context.Context, teamID, template, buildID string, fn func(LogEvent) error) error {
	_, b, err := s.Build(ctx, teamID, template, buildID)
	if err != nil {
		return err
	}
	s.logsMu.Lock()
	l, live := s.logs[buildID]
	s.logsMu.Unlock()
	if !live {
		if b.Log != "" {
			if err := fn(LogEvent{Timestamp: b.CreatedAt, Stream: "system", Text: b.Log}); err != nil {
				return err
			}
		}
		return fn(LogEvent{Timestamp: time.Now().UTC(), Stream: "system", Text: "build " + b.Status + "\n", Finished: true, Status: b.Status})
	}
	next := 0
	for {
		l.mu.Lock()
		events := l.events[min(max(next-l.dropped, 0), len(l.events)):]
		next = l.dropped + len(l.events)
		wait := l.changed
		l.mu.Unlock()
		for _, ev := range events {
			if err := fn(ev); err != nil {
				return err
			}
			if ev.Finished {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait:
		}
	}
}
