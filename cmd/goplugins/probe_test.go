package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProbe covers probe: it starts the plugin (a command, a subprocess
// manifest, a grpc manifest), prints its info and surfaces, checks its
// health, makes the --call, stops it; exit 1 when the call fails, 3 when
// the plugin does not start as configured.
func TestProbe(t *testing.T) {
	counter := filepath.Join(t.TempDir(), "grpc-counter")
	out, err := exec.Command("go", "build", "-o", counter, "../../testdata/plugins/grpc-counter").CombinedOutput()
	require.NoError(t, err, "%s", out)
	echoDir := pluginFolder(t, echoBin, "echo", `, "transport": "subprocess", "surfaces": ["state", "stream"]`)
	grpcDir := pluginFolder(t, counter, "counter", `, "transport": "grpc", "args": ["-version", "1.0.0"]`)

	tests := []struct {
		name      string
		args      []string
		code      int
		plugin    string
		transport string
		surfaces  []string
		response  string
		callCode  string
	}{
		{"command", []string{"--call", `{"data":"hi"}`, echoBin}, exitOK, "echo", "subprocess", []string{"state", "stream"}, `{"data":"hi","version":"1.0.0"}`, ""},
		{"command without call", []string{echoBin}, exitOK, "echo", "subprocess", []string{"state", "stream"}, "", ""},
		{"manifest", []string{"--call", `{"data":"m"}`, filepath.Join(echoDir, "plugin.json")}, exitOK, "echo", "subprocess", []string{"state", "stream"}, `{"data":"m","version":"1.0.0"}`, ""},
		{"grpc manifest", []string{"--call", `{"op":"echo","text":"g"}`, grpcDir}, exitOK, "counter", "grpc", []string{"state", "stream"}, "", ""},
		{"failing call", []string{"--call", `{"op":"nope"}`, echoBin}, exitProblems, "echo", "subprocess", []string{"state", "stream"}, "", "bad_op"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rep probeReport
			r := runJSON(t, &rep, append([]string{"probe", "--json"}, tt.args...)...)
			assert.Equal(t, tt.code, r.code, r.stdout+r.stderr)
			assert.Equal(t, tt.plugin, rep.Name)
			assert.Equal(t, "1.0.0", rep.Version)
			assert.Equal(t, tt.transport, rep.Transport)
			assert.Equal(t, tt.surfaces, rep.Surfaces)
			assert.NotZero(t, rep.Pid)
			assert.True(t, rep.Health.OK, rep.Health.Error)
			assert.True(t, rep.Stop.OK, rep.Stop.Error)
			if len(tt.args) > 1 && tt.args[0] == "--call" {
				require.NotNil(t, rep.Call)
				assert.Equal(t, tt.callCode == "", rep.Call.OK, rep.Call.Error)
				assert.Equal(t, tt.callCode, rep.Call.Code)
				if tt.response != "" {
					assert.JSONEq(t, tt.response, string(rep.Call.Response))
				}
				if tt.transport == "grpc" {
					var resp map[string]any
					require.NoError(t, json.Unmarshal(rep.Call.Response, &resp))
					assert.Equal(t, "g", resp["text"])
				}
			} else {
				assert.Nil(t, rep.Call)
			}
		})
	}
}

func TestProbeText(t *testing.T) {
	r := run(t, "", "probe", "--call", `{"data":"hi"}`, echoBin)
	assert.Equal(t, exitOK, r.code)
	quietInScripts(t, r)
	out := lines(r.stdout)
	assert.Equal(t, "plugin     echo 1.0.0", out[0])
	assert.Equal(t, "about      test echo plugin", out[1])
	assert.Regexp(t, `^transport  subprocess \(pid \d+\)$`, out[2])
	assert.Equal(t, []string{"surfaces   state, stream", "health     ok", `call       {"data":"hi"} -> {"data":"hi","version":"1.0.0"}`, "stop       ok"}, out[3:])
}

func TestProbeRefusesAWrongName(t *testing.T) {
	r := run(t, "", "probe", "--name", "other", echoBin)
	assert.Equal(t, exitCannot, r.code)
	assert.Contains(t, r.stderr, `reports the name "echo"; the host expects "other"`)
}

// TestProbeReportsUnhealthy covers exit 1 for a failing health check.
func TestProbeReportsUnhealthy(t *testing.T) {
	var rep probeReport
	r := runJSON(t, &rep, "probe", "--json", badBin, "unhealthy")
	assert.Equal(t, exitProblems, r.code)
	assert.False(t, rep.Health.OK)
	assert.Contains(t, rep.Health.Error, "the disk is full")
	assert.True(t, rep.Stop.OK)
}

// TestProbeLog covers --log: the plugin's stderr lines reach stderr,
// tagged with the plugin, JSON records with their level; without it,
// stderr stays empty.
func TestProbeLog(t *testing.T) {
	r := run(t, "", "probe", "--log", badBin)
	assert.Equal(t, exitOK, r.code)
	assert.Regexp(t, `level=INFO msg="badplugin ready" plugin=bad stream=stderr`, r.stderr)
	quietInScripts(t, run(t, "", "probe", badBin))
}
