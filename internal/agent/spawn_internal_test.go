package agent

import "syscall"

// Spawn and OpenPTY let spawn_test.go compare spawn with syscall.ForkExec
// through the test binary's reaper.
var OpenPTY = openPTY

func Spawn(argv []string, attr *syscall.ProcAttr) (int, error) { return spawn(argv, attr, nil) }

// ForceForkExec makes every start ForkExec's until restore is called.
func ForceForkExec() (restore func()) {
	canSpawn(nil) // the first call decides ok
	was := spawnState.ok.Swap(false)
	return func() { spawnState.ok.Store(was) }
}
