package agent

// Spawn and OpenPTY let spawn_test.go compare spawn with syscall.ForkExec
// through the test binary's reaper.
var (
	Spawn   = spawn
	OpenPTY = openPTY
)
