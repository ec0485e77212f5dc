package agent

import "runtime/debug"

// releaseMemory hands the agent's free heap back to the sandbox kernel
// before a checkpoint. The Go runtime keeps freed pages for reuse and
// returns them to the OS only slowly; gVisor saves every page the agent
// holds, so each one it keeps is in every snapshot of the sandbox.
func releaseMemory() { debug.FreeOSMemory() }
