// Command thinlab is the single Thinlab binary: agent, platform and CLI.
package main

import (
	"os"

	"github.com/thinlab/thinlab/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:]))
}
