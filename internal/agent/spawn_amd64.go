package agent

const spawnSupported = true

// rawSpawn blocks every signal in the calling thread, clones the child
// described by p (sharing the memory, the parent suspended until the child
// execs or exits), restores the thread's mask and returns the child's pid,
// or the clone's errno. The child runs p's system calls in order and never
// returns to Go: it uses no stack, only registers and p.
func rawSpawn(p *spawnProgram) (pid, errno uintptr)
