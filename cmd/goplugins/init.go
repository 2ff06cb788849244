package main

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/template"
)

//go:embed templates
var templates embed.FS

// modulePath is the goplugins module's path.
const modulePath = "github.com/goplugins/goplugins"

// initData fills the templates.
type initData struct {
	Name, Version, Description string
	Command                    string // the manifest's command
	Module, GoVersion          string // Go only
	Goplugins                  string // Go only: the checkout the replace points to
}

// initFile is one file init writes: its template and mode.
type initFile struct {
	path, template string
	mode           os.FileMode
}

func runInit(env *cli, args []string) int {
	fs := env.newFlags("init", "NAME --lang go|python [flags]",
		"Writes a plugin folder: plugin.json and the source of a plugin that builds, passes\n"+
			"goplugins conform and loads with a DynamicLoader. For Go it also builds the binary\n"+
			"(go build) unless --build=false; the go.mod replaces the unpublished goplugins module\n"+
			"with a checkout (--goplugins). Exit 3 if the folder holds files already or the build fails.")
	lang := fs.String("lang", "", "the plugin's language: go or python")
	dir := fs.String("dir", "", "the folder to write (default ./NAME); it must be empty or absent")
	root := fs.String("goplugins", "", "Go: the goplugins checkout to build against (default: the one this command was built from)")
	module := fs.String("module", "", "Go: the module path (default example.com/plugins/NAME)")
	build := fs.Bool("build", true, "Go: build the binary")
	pos, code, ok := parse(fs, args, false)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return env.usageError("init", "give one plugin NAME")
	}
	name := pos[0]
	if !nameRule.MatchString(name) {
		return env.usageError("init", "%q is not a plugin name: 1 to 64 characters of [a-z0-9._-], starting with a letter or digit", name)
	}
	if *dir == "" {
		*dir = name
	}
	d := initData{Name: name, Version: "0.1.0", Description: name + ", a goplugins plugin"}
	var files []initFile
	switch *lang {
	case "go":
		var err error
		if files, err = d.forGo(*root, *module); err != nil {
			if *root == "" {
				return env.usageError("init", "%v; give --goplugins PATH", err)
			}
			return env.fail("init", exitCannot, err)
		}
	case "python":
		d.Command = "./plugin.py"
		files = []initFile{{"plugin.py", "templates/python/plugin.py.tmpl", 0o755}}
	case "":
		return env.usageError("init", "give --lang go or --lang python")
	default:
		return env.usageError("init", "--lang %q is not go or python", *lang)
	}
	files = append(files, initFile{"plugin.json", "templates/plugin.json.tmpl", 0o644})
	if err := writeFolder(*dir, files, d); err != nil {
		return env.fail("init", exitCannot, err)
	}
	if *lang == "go" {
		if err := env.finishGo(*dir, d, *build); err != nil {
			return env.fail("init", exitCannot, err)
		}
	}
	fmt.Fprintf(env.stdout, "wrote %s (%s plugin %s %s)\n", *dir, *lang, name, d.Version)
	fmt.Fprintf(env.stdout, "next: goplugins conform %s\n", *dir)
	return exitOK
}

// forGo fills in the Go fields of d, against the goplugins checkout root
// ("" to find it), and returns the Go files to write.
func (d *initData) forGo(root, module string) ([]initFile, error) {
	if root == "" {
		var err error
		if root, err = findGoplugins(); err != nil {
			return nil, err
		}
	}
	var err error
	if d.Goplugins, d.GoVersion, err = goDirective(root); err != nil {
		return nil, err
	}
	d.Module, d.Command = module, "./"+d.Name
	if d.Module == "" {
		d.Module = "example.com/plugins/" + d.Name
	}
	return []initFile{{"main.go", "templates/go/main.go.tmpl", 0o644}, {"go.mod", "templates/go/go.mod.tmpl", 0o644}}, nil
}

// finishGo gives the Go folder the checkout's go.sum (a superset of the
// sums the plugin needs, so that it builds without the network) and, if
// build is set, builds the binary.
func (env *cli) finishGo(dir string, d initData, build bool) error {
	if err := copyFile(filepath.Join(d.Goplugins, "go.sum"), filepath.Join(dir, "go.sum")); err != nil {
		return err
	}
	if !build {
		return nil
	}
	p := env.progress("init")
	p.step("building %s", d.Name)
	defer p.done()
	return goBuild(dir, d.Name)
}

// writeFolder writes the files into dir, which must be empty or absent.
func writeFolder(dir string, files []initFile, d initData) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s holds files already; give an empty or new folder with --dir", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		t, err := template.ParseFS(templates, f.template)
		if err != nil {
			return err // the embedded templates parse: tested
		}
		var b bytes.Buffer
		if err := t.Execute(&b, d); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f.path), b.Bytes(), f.mode); err != nil {
			return err
		}
	}
	return nil
}

// findGoplugins returns the root of the goplugins checkout this command
// was built from: the module holding its source (the path the compiler
// recorded, unless built with -trimpath), else the one holding the working
// folder or the executable.
func findGoplugins() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			if mod, err := moduleOf(filepath.Join(dir, "go.mod")); err == nil && mod == modulePath {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("cannot find the goplugins checkout this command was built from")
}

// moduleOf returns the module path a go.mod declares.
func moduleOf(gomod string) (string, error) {
	path, _, err := goModLines(gomod)
	return path, err
}

// goDirective checks that root is the goplugins module and returns its
// absolute path and its go.mod's go version.
func goDirective(root string) (string, string, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", "", err
	}
	mod, goVersion, err := goModLines(filepath.Join(abs, "go.mod"))
	if err != nil {
		return "", "", fmt.Errorf("--goplugins %s: %w", root, err)
	}
	if mod != modulePath {
		return "", "", fmt.Errorf("--goplugins %s holds module %q, not %s", root, mod, modulePath)
	}
	return abs, goVersion, nil
}

// goModLines reads the module and go lines of a go.mod.
func goModLines(gomod string) (module, goVersion string, err error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == "module" {
			module = strings.Trim(fields[1], `"`)
		}
		if len(fields) == 2 && fields[0] == "go" {
			goVersion = fields[1]
		}
	}
	if module == "" || goVersion == "" {
		return "", "", fmt.Errorf("%s has no module or go line", gomod)
	}
	return module, goVersion, sc.Err()
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// goBuild builds the plugin in dir into dir/name.
func goBuild(dir, name string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the Go toolchain is not on PATH; build by hand: cd %s && go build -o %s .", dir, name)
	}
	cmd := exec.Command(goTool, "build", "-o", name, ".")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build in %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}
