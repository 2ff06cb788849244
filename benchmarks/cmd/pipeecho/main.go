// Command pipeecho copies stdin to stdout in 64-byte messages: the raw pipe
// baseline of the comparison benchmarks.
package main

import (
	"io"
	"os"
)

func main() {
	buf := make([]byte, 64)
	for {
		if _, err := io.ReadFull(os.Stdin, buf); err != nil {
			return
		}
		if _, err := os.Stdout.Write(buf); err != nil {
			return
		}
	}
}
