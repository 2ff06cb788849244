package goplugins

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestVersionPrecedence checks the example of SemVer 2.0.0 section 11, every
// pair both ways, plus the rules it illustrates.
func TestVersionPrecedence(t *testing.T) {
	chains := [][]string{
		{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
			"1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"},
		// Numeric parts compare numerically, not as text.
		{"1.0.0", "2.0.0", "2.1.0", "2.1.1", "2.10.0", "10.0.0"},
		// Numeric identifiers sort before alphanumeric ones.
		{"1.0.0-2", "1.0.0-10", "1.0.0-a", "1.0.0-a.2", "1.0.0-a.10"},
	}
	for _, chain := range chains {
		for i := range chain {
			vi, err := parseVersion("p", chain[i])
			require.NoError(t, err)
			for j := range chain {
				vj, err := parseVersion("p", chain[j])
				require.NoError(t, err)
				want := 0
				switch {
				case i < j:
					want = -1
				case i > j:
					want = 1
				}
				assert.Equal(t, want, vi.Compare(vj), "%s compared with %s", vi, vj)
				assert.Equal(t, i < j, vi.LessThan(vj), "%s < %s", vi, vj)
				assert.Equal(t, i > j, vi.GreaterThan(vj), "%s > %s", vi, vj)
			}
		}
	}

	// Build metadata does not take part in precedence.
	a, err := parseVersion("p", "1.0.0+build.1")
	require.NoError(t, err)
	b, err := parseVersion("p", "1.0.0+build.2")
	require.NoError(t, err)
	assert.Equal(t, 0, a.Compare(b))
}

func TestParseVersion(t *testing.T) {
	for _, s := range []string{"0.0.0", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0-0.3.7",
		"1.0.0-x-y-z.--", "1.0.0+20130313144700", "1.0.0-beta+exp.sha.5114f85"} {
		v, err := parseVersion("auth", s)
		if assert.NoError(t, err, s) {
			assert.Equal(t, s, v.Original())
		}
	}

	tests := []struct {
		version, reason string
	}{
		{"v1.2.0", "invalid characters"},
		{"1.2", "invalid semantic version"},
		{"01.2.3", "starts with 0"},
		{"1.02.3", "starts with 0"},
		{"1.2.3-01", "starts with 0"},
		{"1.2.3-", "invalid prerelease"},
		{"1.2.3-rc..1", "invalid prerelease"},
		{"1.2.3+", "invalid metadata"},
		{"1.2.3.4", "invalid characters"},
		{" 1.2.3", "invalid characters"},
		{"", "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			v, err := parseVersion("auth", tt.version)
			assert.Nil(t, v)
			require.ErrorIs(t, err, ErrInvalidVersion)
			for _, s := range []string{`plugin "auth"`, fmt.Sprintf("%q", tt.version), "strict", tt.reason} {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestParseConstraint(t *testing.T) {
	for _, s := range []string{"*", "^1.4", "~2.1", "1.x", ">=1.2.0, <2.0.0", ">=1.2.0 <2.0.0",
		"1.0 - 2.0", "^1 || ^3", "!=1.2.0", ">=1.0.0-0"} {
		_, err := parseConstraint("auth", s)
		assert.NoError(t, err, s)
	}

	tests := []struct {
		constraint string
		contains   []string
	}{
		{"", []string{"empty", `"*"`}},
		{"   ", []string{"empty", `"*"`}},
		{">>1", []string{`">>1"`, "does not parse", "improper constraint"}},
		{"1.2.3.4", []string{`"1.2.3.4"`, "does not parse"}},
		{">=1.0.0,", []string{`">=1.0.0,"`, "does not parse"}},
		{"||", []string{`"||"`, "does not parse"}},
	}
	for _, tt := range tests {
		t.Run(tt.constraint, func(t *testing.T) {
			c, err := parseConstraint("auth", tt.constraint)
			assert.Nil(t, c)
			require.ErrorIs(t, err, ErrInvalidVersion)
			assert.Contains(t, err.Error(), `plugin "auth"`)
			for _, s := range tt.contains {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestCheckConstraint(t *testing.T) {
	tests := []struct {
		constraint, version string
		reason              string // empty: the version satisfies the constraint
	}{
		// Caret: same major; below 1.0.0, same minor; below 0.1.0, exactly equal.
		{"^1.2.3", "1.2.3", ""},
		{"^1.2.3", "1.9.9", ""},
		{"^1.2.3", "2.0.0", "does not have same major version"},
		{"^1.2.3", "1.2.2", "is less than"},
		{"^0.1.0", "0.1.0", ""},
		{"^0.1.0", "0.1.5", ""},
		{"^0.1.0", "0.9.0", "does not have same minor version"},
		{"^0.1.0", "0.2.0", "does not have same minor version"},
		{"^0.1.0", "1.0.0", "does not have same major version"},
		{"^0.0.3", "0.0.3", ""},
		{"^0.0.3", "0.0.4", "does not equal"},
		{"^0.0.3", "0.0.2", "is less than"},
		{"^0.0.3", "0.1.0", "does not have same minor version"},
		// Tilde: same major and minor when given, else same major.
		{"~1.2.3", "1.2.9", ""},
		{"~1.2.3", "1.3.0", "does not have same major and minor version"},
		{"~1.2.3", "1.2.2", "is less than"},
		{"~1.2", "1.2.0", ""},
		{"~1.2", "1.3.0", "does not have same major and minor version"},
		{"~1", "1.9.0", ""},
		{"~1", "2.0.0", "does not have same major version"},
		// Ranges.
		{">=1.2.0, <2.0.0", "1.2.0", ""},
		{">=1.2.0, <2.0.0", "1.99.0", ""},
		{">=1.2.0, <2.0.0", "2.0.0", "is greater than or equal to"},
		{">=1.2.0, <2.0.0", "1.1.9", "is less than"},
		{"1.2.3 - 2.3.4", "2.3.4", ""},
		{"1.2.3 - 2.3.4", "2.3.5", "is greater than"},
		{"1.2.3 - 2.3.4", "1.2.2", "is less than"},
		{"1.0 - 2.0", "2.0.9", ""}, // a partial upper bound covers its patches
		{"1.0 - 2.0", "2.1.0", "is greater than"},
		{"1.x", "1.5.0", ""},
		{"1.x", "2.0.0", "does not have same major version"},
		{"!=1.2.0", "1.2.0", "is equal to"},
		{"=1.2.0", "1.2.1", "is not equal to"},
		// OR: any alternative will do; a refusal gives the reasons of each.
		{"^1.0.0 || ^3.0.0", "1.5.0", ""},
		{"^1.0.0 || ^3.0.0", "3.1.0", ""},
		{"^1.0.0 || ^3.0.0", "2.0.0", `"2.0.0" is less than "3.0.0"`},
		// Prereleases are excluded unless a comparator of the same AND
		// group has one.
		{">=1.0.0", "1.1.0-beta", "is a prerelease version"},
		{"^1.0.0", "1.2.0-alpha", "is a prerelease version"},
		{"*", "1.0.0-rc.1", "is a prerelease version"},
		{">=1.1.0-0", "1.1.0-beta", ""},
		{">=1.0.0-alpha, <2.0.0", "1.5.0-rc.1", ""},
		{"^1.0.0-0", "1.5.0-rc.1", ""},
		{"^1.0.0-0 || ^2.0.0", "2.1.0-rc.1", "is a prerelease version"},
		{">=1.0.0-beta.2", "1.0.0-beta.11", ""},
		{">=1.0.0-beta.11", "1.0.0-beta.2", "is less than"},
	}
	// Messages show a constraint as semver prints it: AND groups joined by
	// spaces, hyphen ranges as comparators.
	shown := map[string]string{
		">=1.2.0, <2.0.0": ">=1.2.0 <2.0.0",
		"1.2.3 - 2.3.4":   ">=1.2.3 <=2.3.4",
		"1.0 - 2.0":       ">=1.0 <=2.0",
	}
	for _, tt := range tests {
		t.Run(tt.constraint+" "+tt.version, func(t *testing.T) {
			c, err := parseConstraint("auth", tt.constraint)
			require.NoError(t, err)
			v, err := parseVersion("auth", tt.version)
			require.NoError(t, err)
			err = checkConstraint("auth", "dependency \"db\" version", v, c)
			if tt.reason == "" {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrIncompatibleVersion)
			constraint := tt.constraint
			if s, ok := shown[constraint]; ok {
				constraint = s
			}
			for _, s := range []string{`plugin "auth"`, `dependency "db" version ` + tt.version,
				fmt.Sprintf("%q", constraint), tt.reason} {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestVersionPolicyHost(t *testing.T) {
	for _, host := range []string{"v1.4.0", "1.4", ""} {
		p, err := NewVersionPolicy(host)
		assert.Nil(t, p)
		require.ErrorIs(t, err, ErrInvalidVersion, host)
		assert.Contains(t, err.Error(), fmt.Sprintf("host version %q", host))
	}

	p, err := NewVersionPolicy("1.4.0")
	require.NoError(t, err)
	assert.Equal(t, "1.4.0", p.hostVersion().String())

	tests := []struct {
		requires string
		is       error // nil: the host is accepted
		contains []string
	}{
		{"", nil, nil},
		{">=1.2.0, <2.0.0", nil, nil},
		{"^1.4", nil, nil},
		{"~1.3", ErrIncompatibleVersion, []string{`"~1.3"`, "1.4.0", "does not have same major and minor version", "use a build of the plugin made for this host"}},
		{"^2.0.0", ErrIncompatibleVersion, []string{`"^2.0.0"`, "1.4.0", "is less than"}},
		{">=1.5.0-0", ErrIncompatibleVersion, []string{"is less than"}},
		{"1.4", nil, nil},
		{">>1", ErrInvalidVersion, []string{`">>1"`, "does not parse"}},
	}
	for _, tt := range tests {
		t.Run(tt.requires, func(t *testing.T) {
			err := p.checkHost("auth", tt.requires)
			if tt.is == nil {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.is)
			assert.Contains(t, err.Error(), `plugin "auth"`)
			for _, s := range tt.contains {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestVersionPolicyRules(t *testing.T) {
	p, err := NewVersionPolicy("2.0.0")
	require.NoError(t, err)

	// Without a rule, any strict version is accepted; a loose one never is.
	require.NoError(t, p.checkPlugin("auth", "9.9.9"))
	err = p.checkPlugin("auth", "1.5")
	require.ErrorIs(t, err, ErrInvalidVersion)
	assert.Contains(t, err.Error(), `plugin "auth"`)

	require.NoError(t, p.SetRule("auth", "~1.4"))
	require.NoError(t, p.checkPlugin("auth", "1.4.7"))
	err = p.checkPlugin("auth", "1.5.0")
	require.ErrorIs(t, err, ErrIncompatibleVersion)
	for _, s := range []string{`plugin "auth"`, "plugin version 1.5.0", `"~1.4"`, "does not have same major and minor version"} {
		assert.Contains(t, err.Error(), s)
	}
	require.NoError(t, p.checkPlugin("billing", "9.0.0"), "a rule binds only its plugin")

	// A bad rule is refused and the rule in force stays.
	err = p.SetRule("auth", ">>1")
	require.ErrorIs(t, err, ErrInvalidVersion)
	assert.Contains(t, err.Error(), `">>1"`)
	require.ErrorIs(t, p.checkPlugin("auth", "1.5.0"), ErrIncompatibleVersion)

	// Replacing the rule, then removing it.
	require.NoError(t, p.SetRule("auth", ">=1.5.0"))
	require.NoError(t, p.checkPlugin("auth", "1.5.0"))
	require.ErrorIs(t, p.checkPlugin("auth", "1.4.7"), ErrIncompatibleVersion)
	require.NoError(t, p.SetRule("auth", ""))
	require.NoError(t, p.checkPlugin("auth", "0.1.0"))
	require.NoError(t, p.SetRule("never-set", ""), "removing a missing rule is fine")
}

// TestVersionPolicyConcurrent sets and checks rules together, under -race.
func TestVersionPolicyConcurrent(t *testing.T) {
	verifyNoLeaks(t)
	p, err := NewVersionPolicy("1.0.0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	wg.Go(func() {
		for i := range 200 {
			errs <- p.SetRule("auth", fmt.Sprintf("^1.%d.0", i%3))
		}
	})
	wg.Go(func() {
		for range 200 {
			// Every rule the writer sets accepts 1.2.0.
			errs <- p.checkPlugin("auth", "1.2.0")
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
}

func TestCheckDependency(t *testing.T) {
	tests := []struct {
		name              string
		constraint, found string
		is                error // nil: the dependency fits
		contains          []string
	}{
		{"fits", "^1.2.0", "1.3.0", nil, nil},
		{"prerelease fits a prerelease range", ">=2.0.0-0", "2.0.0-rc.1", nil, nil},
		{"too old", "^1.2.0", "1.1.0", ErrIncompatibleVersion,
			[]string{`plugin "web"`, `dependency "db" version 1.1.0`, `"^1.2.0"`, "is less than"}},
		{"prerelease excluded", "^1.2.0", "1.3.0-beta", ErrIncompatibleVersion,
			[]string{`plugin "web"`, "is a prerelease version"}},
		{"bad constraint", "^^1", "1.3.0", ErrInvalidVersion,
			[]string{`plugin "web"`, `"^^1"`}},
		{"empty constraint", "", "1.3.0", ErrInvalidVersion,
			[]string{`plugin "web"`, "empty"}},
		{"loose found version", "^1.2.0", "v1.3.0", ErrInvalidVersion,
			[]string{`plugin "db"`, `"v1.3.0"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkDependency("web", "db", tt.constraint, tt.found)
			if tt.is == nil {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.is)
			for _, s := range tt.contains {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}
