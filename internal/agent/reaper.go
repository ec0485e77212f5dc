package agent

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Reaper owns every wait on the agent's child processes.
//
// As PID 1 (or a child subreaper) the agent inherits every orphan in the
// sandbox and must reap them, but a blind wait4(-1) would steal the exit
// status of commands the agent started itself. So one Reaper does all the
// waiting: commands are started through Reaper.Start, which forks under the
// reaper's lock and registers the new pid before the lock is released; the
// reaper, which waits only while holding that lock, then hands each status to
// the registered waiter and discards the statuses of orphans. A command that
// exits immediately cannot be missed or stolen.
//
// Consequently nothing else in the process may wait for children: do not use
// exec.Cmd.Wait or os.Process.Wait alongside a Reaper in reap-all mode.
//
// In reap-all mode (reapAll true) the Reaper waits for any child; there must be
// at most one such Reaper per process. Otherwise it waits only for the pids it
// started, leaving the process's other children alone (for a non-init agent,
// and for tests that run other processes).
type Reaper struct {
	reapAll bool

	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus

	running sync.Once // Run
	sigs    chan os.Signal
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

// NewReaper starts a reaper. Call Close to stop it.
func NewReaper(reapAll bool) *Reaper {
	r := NewIdleReaper(reapAll)
	r.Run()
	return r
}

// NewIdleReaper returns a reaper that waits for nothing until Run. A new
// agent has no children before its first command, and the first
// signal.Notify of a process costs it a thread (milliseconds in gVisor),
// which the agent spends after its first health answer rather than before.
func NewIdleReaper(reapAll bool) *Reaper {
	return &Reaper{
		reapAll: reapAll,
		waiters: make(map[int]chan syscall.WaitStatus),
		sigs:    make(chan os.Signal, 1),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Run starts the reaper's waiting (once; later calls do nothing). Start it
// before the first Start.
func (r *Reaper) Run() {
	r.running.Do(func() {
		signal.Notify(r.sigs, syscall.SIGCHLD)
		go r.loop()
		r.poke() // reap anything that exited before we started
	})
}

// Close stops the reaper. Pending waiters never receive a status.
func (r *Reaper) Close() {
	r.running.Do(func() { close(r.done) }) // never ran: nothing to stop
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.done
}

// Start calls fork, which must start exactly one child process and return its
// pid, with the reaper's lock held, and registers that pid. The returned
// channel receives the child's wait status once.
func (r *Reaper) Start(fork func() (int, error)) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	pid, err := fork()
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiters[pid] = ch
	r.mu.Unlock()
	r.poke()
	return pid, ch, nil
}

func (r *Reaper) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Reaper) loop() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigs:
		case <-r.kick:
		}
		r.reap()
	}
}

// reap collects every child that has exited, without blocking.
func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reapAll {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				return // ECHILD: no children; 0: none exited yet
			}
			r.deliver(pid, ws)
		}
	}
	for pid := range r.waiters {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		for errors.Is(err, syscall.EINTR) {
			got, err = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		}
		switch {
		case err == nil && got == pid:
			r.deliver(pid, ws)
		case errors.Is(err, syscall.ECHILD):
			// Someone else reaped it; report it as killed rather than hang.
			r.deliver(pid, syscall.WaitStatus(syscall.SIGKILL))
		}
	}
}

// deliver hands ws to pid's waiter, if any; orphans' statuses are dropped.
// Called with r.mu held.
func (r *Reaper) deliver(pid int, ws syscall.WaitStatus) {
	if ch, ok := r.waiters[pid]; ok {
		delete(r.waiters, pid)
		ch <- ws
	}
}
