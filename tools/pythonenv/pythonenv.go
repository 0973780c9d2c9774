// Package pythonenv is tooling, not product: it finds the pinned Python virtual environments
// that `make deps` builds (scripts/python-envs.sh) for the tests and the demo that run
// integrations/python.
package pythonenv

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The environments, named as their directories under .venv and their constraints files under
// integrations/python/constraints.
const (
	// SA20 has SQLAlchemy 2.0 with asyncpg, psycopg 3, psycopg2, FastAPI, uvicorn and gunicorn;
	// the e2e and grafana tests and the demo run on it.
	SA20 = "sa20"
	// SA14 has SQLAlchemy 1.4 with asyncpg and psycopg2.
	SA14 = "sa14"
)

// Python returns the interpreter of environment env in the repository at root. It fails,
// saying "run make deps", when the environment is missing or was built from another
// version of its constraints file.
func Python(root, env string) (string, error) {
	dir := filepath.Join(root, ".venv", env)
	python := filepath.Join(dir, "bin", "python")
	constraints := filepath.Join(root, "integrations", "python", "constraints", env+".txt")
	want, err := fileSHA256(constraints)
	if err != nil {
		return "", fmt.Errorf("python environment %s: %w", env, err)
	}
	if _, err := os.Stat(python); err != nil {
		return "", fmt.Errorf("python environment %s: %s is missing: run make deps", env, python)
	}
	// The build writes the stamp last; its first line is the constraints file's SHA-256.
	got, err := firstLine(filepath.Join(dir, "constraints.stamp"))
	if err != nil {
		return "", fmt.Errorf("python environment %s is incomplete (%w): run make deps", env, err)
	}
	if got != want {
		return "", fmt.Errorf("python environment %s was built from an older %s: run make deps", env, constraints)
	}
	return python, nil
}

func fileSHA256(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func firstLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		if err := s.Err(); err != nil {
			return "", err
		}
		return "", errors.New(path + " is empty")
	}
	return strings.TrimSpace(s.Text()), nil
}
