//go:build !amd64

package agent

// spawn's child is written for amd64 only; elsewhere spawn is ForkExec.
const spawnSupported = false

func rawSpawn(p *spawnProgram) (pid, errno uintptr) { panic("rawSpawn: not on this architecture") }
