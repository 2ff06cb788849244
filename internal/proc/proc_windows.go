package proc

import (
	"os"
	"os/exec"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

func launch(*exec.Cmd) error { return ErrUnsupported }

func exited() {}

func awaitExit(int) bool { return false }

func signalGroup(int, syscall.Signal) error { return ErrUnsupported }

func openVerified(string, []byte) (*os.File, error) { return nil, ErrUnsupported }

func execVerified(f *os.File) (string, *os.File) { return f.Name(), nil }
