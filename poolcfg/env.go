package poolcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// EnvValue is one variable from a .env file, with where it was set.
type EnvValue struct {
	Value string
	Line  int    // 1-based line of the variable's name
	File  string // the name given to ParseEnvFile
}

// ParseEnvFile reads a .env file the way python-dotenv does, without ${VAR} expansion:
//
//	# comment lines and blank lines are skipped
//	export DB_POOL_SIZE=10   # "export " is optional; " #" after a value starts a comment
//	APP_NAME='as written'    # single quotes: literal, except \' and \\
//	GREETING="a\nb \"c\""    # double quotes: escapes \n \r \t \" \' \\ \a \b \f \v
//	DB_ECHO=
//
// The last line sets an empty value. As in python-dotenv, the spaces after '=' belong to
// no value, so "A= # x" sets A to "# x". Quoted values may span lines. CRLF line endings
// are accepted. A later assignment of the same name wins. Every malformed line is
// reported, as name:line; messages never quote a value, which may be a secret.
func ParseEnvFile(r io.Reader, name string) (map[string]EnvValue, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	text := strings.TrimPrefix(strings.ReplaceAll(string(data), "\r\n", "\n"), "\ufeff")
	vars := map[string]EnvValue{}
	var errs []error
	line := 1
	for text != "" {
		key, value, rest, lines, problem := envEntry(text)
		switch {
		case problem != "":
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, problem))
		case key != "":
			vars[key] = EnvValue{Value: value, Line: line, File: name}
		}
		text, line = rest, line+lines
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return vars, nil
}

// LoadEnvFile reads the .env file at path (see ParseEnvFile).
func LoadEnvFile(path string) (map[string]EnvValue, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseEnvFile(bytes.NewReader(data), path)
}

// envEntry parses the entry at the start of text: an assignment, a comment or a blank line.
// It returns the rest of the text and how many lines it consumed. On a problem it skips to
// the next line so that later lines are still checked.
func envEntry(text string) (key, value, rest string, lines int, problem string) {
	line, rest, _ := strings.Cut(text, "\n")
	s := strings.TrimLeft(line, " \t")
	if s == "" || s[0] == '#' {
		return "", "", rest, 1, ""
	}
	if after, ok := strings.CutPrefix(s, "export"); ok && after != "" && (after[0] == ' ' || after[0] == '\t') {
		s = strings.TrimLeft(after, " \t")
	}
	n := 0
	for n < len(s) && isKeyByte(s[n], n == 0) {
		n++
	}
	key, s = s[:n], strings.TrimLeft(s[n:], " \t")
	if key == "" || s == "" || s[0] != '=' {
		return "", "", rest, 1, "expected KEY=VALUE, with KEY made of letters, digits, _ and . (not starting with a digit)"
	}
	s = strings.TrimLeft(s[1:], " \t")
	if s == "" || (s[0] != '"' && s[0] != '\'') {
		if i := strings.Index(s, " #"); i >= 0 {
			s = s[:i]
		}
		if i := strings.Index(s, "\t#"); i >= 0 {
			s = s[:i]
		}
		return key, strings.TrimRight(s, " \t"), rest, 1, ""
	}
	// Quoted: the value runs to the matching quote, possibly over several lines. s is a
	// suffix of line, so the quote is at len(line)-len(s) in text.
	quote := s[0]
	var b strings.Builder
	for i := len(line) - len(s) + 1; i < len(text); i++ {
		c := text[i]
		switch {
		case c == quote:
			tail, after, _ := strings.Cut(text[i+1:], "\n")
			lines = 1 + strings.Count(text[:i], "\n")
			if t := strings.TrimLeft(tail, " \t"); t != "" && t[0] != '#' {
				return "", "", after, lines, fmt.Sprintf("%s: unexpected text after the closing quote", key)
			}
			return key, b.String(), after, lines, ""
		case c == '\\' && i+1 < len(text):
			if r, ok := envEscape(quote, text[i+1]); ok {
				b.WriteByte(r)
				i++
				continue
			}
		}
		b.WriteByte(c)
	}
	return "", "", "", strings.Count(text, "\n") + 1, fmt.Sprintf("%s: missing closing %c quote", key, quote)
}

// isKeyByte accepts what shells and python-dotenv accept in names: letters, _, and after
// the first byte digits and '.'.
func isKeyByte(c byte, first bool) bool {
	letter := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_'
	return letter || !first && ('0' <= c && c <= '9' || c == '.')
}

// envEscape decodes the escapes python-dotenv decodes inside quote; others stay literal.
func envEscape(quote, c byte) (byte, bool) {
	if quote == '\'' {
		return c, c == '\'' || c == '\\'
	}
	i := strings.IndexByte(`\'"abfnrtv`, c)
	if i < 0 {
		return 0, false
	}
	return "\\'\"\a\b\f\n\r\t\v"[i], true
}

// Env is where SettingsFromEnv reads the DB_* variables: the process environment and,
// optionally, the application's .env file. The zero Env is empty.
type Env struct {
	osLookup func(string) (string, bool)
	file     map[string]EnvValue
}

// NewEnv combines the process environment, read with osLookup (os.LookupEnv outside tests),
// with a .env file from ParseEnvFile or LoadEnvFile. Either may be nil. The process
// environment wins over the file, as with python-dotenv's default (override=False): a
// variable set by the orchestrator overrides the checked-in .env.
func NewEnv(file map[string]EnvValue, osLookup func(string) (string, bool)) Env {
	return Env{osLookup: osLookup, file: file}
}

// Lookup returns the value of key and where it was set: "file:line" when it came from the
// .env file, "" when it came from the process environment or is unset.
func (e Env) Lookup(key string) (value, where string, ok bool) {
	if e.osLookup != nil {
		if v, ok := e.osLookup(key); ok {
			return v, "", true
		}
	}
	if v, ok := e.file[key]; ok {
		return v.Value, v.File + ":" + strconv.Itoa(v.Line), true
	}
	return "", "", false
}

// SettingsFromEnv overrides base with the DB_* variables found in env:
// DB_POOL_SIZE and DB_MAX_OVERFLOW (integers), DB_POOL_TIMEOUT and DB_POOL_RECYCLE (seconds,
// integer or decimal, or Go durations such as 30s; DB_POOL_RECYCLE=-1 means never, stored
// as Recycle 0, and an explicit 0 is refused because SQLAlchemy reads it as "at every
// checkout"), DB_POOL_PRE_PING and DB_ECHO (true/false, 1/0, yes/no, on/off). It returns
// every problem at once, each as DB_POOL_SIZE="abc": not an integer, prefixed with
// file:line when the value came from the .env file.
func SettingsFromEnv(env Env, base Settings) (Settings, error) {
	type source struct{ at, raw string } // at is "file:line: " or ""
	s := base
	var errs []error
	set := map[string]source{}
	for _, key := range settingKeys {
		raw, where, ok := env.Lookup(envNames[key])
		if !ok {
			continue
		}
		at := ""
		if where != "" {
			at = where + ": "
		}
		if problem := setSetting(&s, key, raw); problem != "" {
			errs = append(errs, valueError(at, envNames[key], raw, problem))
			continue
		}
		set[key] = source{at, raw}
	}
	errs = append(errs, checkSettings(s, func(key string) (string, string, string) {
		if src, ok := set[key]; ok {
			return src.at, envNames[key], src.raw
		}
		return "", envNames[key], formatSetting(s, key)
	})...)
	if len(errs) > 0 {
		return base, errors.Join(errs...)
	}
	return s, nil
}
