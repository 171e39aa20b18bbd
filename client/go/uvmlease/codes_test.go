package uvmlease

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The codes are libuvmlease's: same numbers, names and messages as
// common/uvmlease_errors.h.
func TestCodesMatchTheCHeader(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "common", "uvmlease_errors.h"))
	if err != nil {
		t.Fatal(err)
	}
	src := strings.ReplaceAll(string(b), "\\\n", " ")
	src = regexp.MustCompile(`(?s)/\*.*?\*/`).ReplaceAllString(src, "")
	re := regexp.MustCompile(`X\((\w+),\s*(\d+),\s*"([^"]+)",\s*((?:"[^"]*"\s*)+)\)`)
	ents := re.FindAllStringSubmatch(src, -1)
	if len(ents) < 40 {
		t.Fatalf("only %d codes in the header", len(ents))
	}
	for _, e := range ents {
		n, _ := strconv.Atoi(e[2])
		var msg string
		for _, p := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(e[4], -1) {
			msg += p[1]
		}
		c := Code(n)
		if c.Name() != e[3] || c.Error() != "uvmlease: "+msg {
			t.Errorf("code %d: Go says %q / %q, the header %q / %q", n, c.Name(), c.Error(), e[3], msg)
		}
	}
	if len(codeTable) != len(ents) {
		t.Errorf("%d codes in Go, %d in the header", len(codeTable), len(ents))
	}
}

func TestErrorsMatchCodesAndCauses(t *testing.T) {
	err := error(&HolderError{Op: "acquire", Code: ErrBusy, Holder: Holder{PID: 7, Comm: "shim", Label: "ctr", Phase: "cim-mount"}})
	var code Code
	if !errors.Is(err, ErrBusy) || errors.Is(err, ErrTimeout) || !errors.As(err, &code) || code != 20 {
		t.Fatalf("HolderError: %v", err)
	}
	e := ctxError("acquire", errors.New("cause"), true)
	if !errors.Is(e, ErrTimeout) {
		t.Fatalf("%v", e)
	}
}
