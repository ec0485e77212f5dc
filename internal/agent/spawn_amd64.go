package agent

const spawnSupported = true

// rawSpawn clones the child described by p (sharing the memory, the parent
// suspended until the child execs or exits) and returns its pid, or the
// clone's errno. The child runs p's system calls in order and never returns
// to Go: it uses no stack, only registers and p. Signals need not be
// blocked around the clone, as Go's fork does: the child starts with no
// handler (CLONE_CLEAR_SIGHAND), so none of Go's can run on the shared
// stack, and the parent runs nothing until the child has exec'd.
func rawSpawn(p *spawnProgram) (pid, errno uintptr)
