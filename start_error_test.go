package goplugins

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goplugins/goplugins/internal/proc"
)

// TestStartErrorTellsWhatFailed: a child that could not start gives the
// error the transports document: a checksum mismatch is
// ErrChecksumMismatch; an OS without child processes (Windows) is
// ErrTransport that also matches errors.ErrUnsupported; anything else is
// the transport's code. Each message names the command.
func TestStartErrorTellsWhatFailed(t *testing.T) {
	tests := []struct {
		name  string
		cause error
		want  []error
	}{
		{"checksum", fmt.Errorf("x: %w", proc.ErrChecksum), []error{ErrChecksumMismatch}},
		{"unsupported OS", proc.ErrUnsupported, []error{ErrTransport, errors.ErrUnsupported}},
		{"other", errors.New("exec format error"), []error{ErrHandshake}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := startError(tt.cause, "p", "/bin/plugin", "SubprocessConfig", codeHandshake)
			require.Error(t, err)
			for _, want := range tt.want {
				assert.ErrorIs(t, err, want)
			}
			assert.Contains(t, err.Error(), "/bin/plugin")
		})
	}
}
