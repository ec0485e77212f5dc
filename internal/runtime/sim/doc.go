// Package sim is a runtime driver for control-plane scale tests ONLY: it
// runs no sandboxes. Its "instances" are entries in a map, and one shared
// in-process fake agent answers what stasisd's lifecycle asks of an agent
// (health, quiesce, token rotation); it runs no commands and serves no
// files. It exists only in binaries built with the stasis_sim tag, so a
// production stasisd cannot select it.
package sim
