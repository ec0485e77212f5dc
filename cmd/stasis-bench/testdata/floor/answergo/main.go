// Command answergo is the create floor's Go init: it listens on the agent's
// port and answers one line to every connection. Built static by
// floor_test.go.
package main

import "net"

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
