package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v4"
)

// The client's configuration file names daemons as contexts, like
// kubeconfig's or incus's remotes:
//
//	current-context: prod
//	contexts:
//	  prod:
//	    url: https://host1:7443
//	    token-file: ~/.config/vmpersona/prod.token
//	    cacert: /etc/vmpersona/ca.pem
//	  local:
//	    socket: /run/vmpersona/hostd.sock
//
// A flag wins over its environment variable, which wins over the context.

// clientConfig is the file's content.
type clientConfig struct {
	CurrentContext string                   `yaml:"current-context"`
	Contexts       map[string]clientContext `yaml:"contexts"`
}

// clientContext is one daemon and how to reach it.
type clientContext struct {
	URL       string `yaml:"url"`
	Socket    string `yaml:"socket"`
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token-file"`
	CACert    string `yaml:"cacert"`
}

// configPath is $VMPERSONA_CONFIG, else $XDG_CONFIG_HOME/vmpersona/config.yaml,
// else ~/.config/vmpersona/config.yaml ("" when there is no home).
func configPath(getenv func(string) string) string {
	if p := getenv("VMPERSONA_CONFIG"); p != "" {
		return p
	}
	if x := getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "vmpersona", "config.yaml")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "vmpersona", "config.yaml")
	}
	return ""
}

// applyContext fills what neither a flag nor the environment set from the
// chosen context (--context, else VMPERSONA_CONTEXT, else the file's
// current-context). No file and no context asked for: nothing to do.
func (g *globals) applyContext(getenv func(string) string) error {
	path := configPath(getenv)
	var cfg clientConfig
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("read %s: %w", path, err)
		default:
			if err := yaml.Unmarshal(b, &cfg); err != nil {
				return fmt.Errorf("%s: %v", path, err)
			}
		}
	}
	name := g.context
	if name == "" {
		name = cfg.CurrentContext
	}
	if name == "" {
		return nil
	}
	c, ok := cfg.Contexts[name]
	if !ok {
		var names []string
		for n := range cfg.Contexts {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			return usageErrorf("no context %q: %s defines none", name, orNone(path))
		}
		return usageErrorf("no context %q in %s; contexts: %s", name, path, strings.Join(names, ", "))
	}
	home := getenv("HOME")
	expand := func(p string) string {
		if rest, ok := strings.CutPrefix(p, "~/"); ok && home != "" {
			return filepath.Join(home, rest)
		}
		return p
	}
	if !g.urlSet && !g.socketSet && g.url == "" && getenv("VMPERSONA_SOCKET") == "" {
		switch {
		case c.URL != "":
			g.url = c.URL
		case c.Socket != "":
			g.socket = expand(c.Socket)
		}
	}
	if g.token == "" && g.tokenFile == "" {
		g.token, g.tokenFile = c.Token, expand(c.TokenFile)
	}
	if g.cacert == "" {
		g.cacert = expand(c.CACert)
	}
	return nil
}

func orNone(path string) string {
	if path == "" {
		return "no configuration file"
	}
	return path
}
