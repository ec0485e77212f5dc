// Command answergohttp is answergo linked with net/http and os/user (the
// agent's biggest dependencies): it listens on the agent's
// port and answers one line to every connection. Built static by
// floor_test.go.
package main

import (
	"net"

	_ "net/http" // its package init and size, without its work
	_ "os/user"
)

func main() {
	ln, err := net.Listen("tcp", ":49983")
	if err != nil {
		panic(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		c.Write([]byte("ok\n"))
		c.Close()
	}
}
