// Package clientconfig is the thinlab CLI's file of named contexts: which
// agent to talk to (URL) and with which token, plus the passwords of clones
// the CLI created so that `thinlab connect` needs no prompt. The file holds
// secrets, so it is always written with mode 0600 in a 0700 directory.
package clientconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"gopkg.in/yaml.v3"
)

// EnvPath overrides where the file lives.
const EnvPath = "THINLAB_CONFIG"

// Context is one named agent endpoint.
type Context struct {
	Name  string `yaml:"name"`
	URL   string `yaml:"url"`
	Token string `yaml:"token,omitempty"`
	// CAFile is a PEM file with the CA that signed the agent's TLS
	// certificate (empty: the system's roots).
	CAFile string `yaml:"ca-file,omitempty"`
	// Platform marks a platform context: URL is the platform's address,
	// Token a personal API token, Org the organization (slug) and Agent
	// the agent the client commands act on unless --agent names another.
	Platform bool   `yaml:"platform,omitempty"`
	Org      string `yaml:"org,omitempty"`
	Agent    string `yaml:"agent,omitempty"`
}

// ClonePassword is a clone password saved by `thinlab clone create`, keyed
// by the agent URL and clone ID (clone IDs are only unique per agent).
type ClonePassword struct {
	URL      string `yaml:"url"`
	Clone    string `yaml:"clone"`
	Password string `yaml:"password"`
}

// File is the whole config file.
type File struct {
	CurrentContext string          `yaml:"current-context,omitempty"`
	Contexts       []Context       `yaml:"contexts,omitempty"`
	ClonePasswords []ClonePassword `yaml:"clone-passwords,omitempty"`
}

// Path is where the config file lives: $THINLAB_CONFIG, else
// $XDG_CONFIG_HOME/thinlab/config.yaml, else ~/.config/thinlab/config.yaml.
func Path() (string, error) {
	if p := os.Getenv(EnvPath); p != "" {
		return p, nil
	}
	if dir := os.Getenv("XDG_CONFIG_HOME"); dir != "" {
		return filepath.Join(dir, "thinlab", "config.yaml"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the config file: %w; set %s or XDG_CONFIG_HOME", err, EnvPath)
	}
	return filepath.Join(home, ".config", "thinlab", "config.yaml"), nil
}

// Load reads the file at path. A missing file is an empty File, not an
// error: a fresh machine simply has no contexts yet.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path) //nolint:gosec // G304: the CLI user's own config file, named by them; read with their rights
	if errors.Is(err, fs.ErrNotExist) {
		return &File{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	var f File
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("config %s is not valid YAML: %w; fix or remove the file", path, err)
	}
	return &f, nil
}

// Save writes f to path atomically (temp file + rename) with mode 0600,
// creating the directory with mode 0700 if needed.
func Save(path string, f *File) error {
	data, err := yaml.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*.yaml")
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	// Removing the temp file fails (harmlessly) after a successful rename;
	// after a failed write it is cleanup whose error adds nothing.
	defer func() { _ = os.Remove(tmp.Name()) }()
	err = writeSynced(tmp, data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// writeSynced writes data to f with mode 0600 and syncs it to disk.
func writeSynced(f *os.File, data []byte) error {
	// CreateTemp already uses 0600; Chmod makes it explicit and survives
	// an unusual umask.
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// ValidateName checks a context name.
func ValidateName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("context name %q: use letters, digits, '_', '.' and '-', starting with a letter or digit", name)
	}
	return nil
}

// Context returns the context named name.
func (f *File) Context(name string) (Context, bool) {
	for _, c := range f.Contexts {
		if c.Name == name {
			return c, true
		}
	}
	return Context{}, false
}

// Set adds c, or replaces the context with the same name. The first
// context added becomes the current one.
func (f *File) Set(c Context) {
	for i := range f.Contexts {
		if f.Contexts[i].Name == c.Name {
			f.Contexts[i] = c
			return
		}
	}
	f.Contexts = append(f.Contexts, c)
	if f.CurrentContext == "" {
		f.CurrentContext = c.Name
	}
}

// Use makes name the current context.
func (f *File) Use(name string) error {
	if _, ok := f.Context(name); !ok {
		return f.notFound(name)
	}
	f.CurrentContext = name
	return nil
}

// Remove deletes the context named name; removing the current context
// leaves no current context.
func (f *File) Remove(name string) error {
	for i, c := range f.Contexts {
		if c.Name == name {
			f.Contexts = append(f.Contexts[:i], f.Contexts[i+1:]...)
			if f.CurrentContext == name {
				f.CurrentContext = ""
			}
			return nil
		}
	}
	return f.notFound(name)
}

func (f *File) notFound(name string) error {
	if len(f.Contexts) == 0 {
		return fmt.Errorf("context %q not found: there are no contexts; add one with `thinlab context add NAME --url URL`", name)
	}
	return fmt.Errorf("context %q not found; `thinlab context list` shows the names", name)
}

// ClonePassword returns the saved password of a clone on the agent at url.
func (f *File) ClonePassword(url, clone string) (string, bool) {
	for _, p := range f.ClonePasswords {
		if p.URL == url && p.Clone == clone {
			return p.Password, true
		}
	}
	return "", false
}

// SetClonePassword saves (or replaces) a clone's password.
func (f *File) SetClonePassword(url, clone, password string) {
	for i := range f.ClonePasswords {
		if f.ClonePasswords[i].URL == url && f.ClonePasswords[i].Clone == clone {
			f.ClonePasswords[i].Password = password
			return
		}
	}
	f.ClonePasswords = append(f.ClonePasswords, ClonePassword{URL: url, Clone: clone, Password: password})
}

// ForgetClonePassword drops a saved password; it reports whether there was one.
func (f *File) ForgetClonePassword(url, clone string) bool {
	for i, p := range f.ClonePasswords {
		if p.URL == url && p.Clone == clone {
			f.ClonePasswords = append(f.ClonePasswords[:i], f.ClonePasswords[i+1:]...)
			return true
		}
	}
	return false
}
