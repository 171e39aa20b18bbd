package wire

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Hostile and broken inputs get the code PROTOCOL.md section 3 names,
// checked in its order.
func TestCheckOrderOfFailures(t *testing.T) {
	cases := []struct {
		name string
		hex  string
		lim  Limits
		want int
	}{
		{"empty", "", MessageLimits, Truncated},
		{"never-used byte", "81 a1 76 c1", MessageLimits, Malformed},
		{"huge array count", "dd 0f ff ff ff", MessageLimits, Limit},
		{"huge map count", "df 0f ff ff ff", MessageLimits, Limit},
		{"str32 beyond limit", "db 00 00 10 00", MessageLimits, Limit},
		{"map count not backed", "8f a1 76", MessageLimits, Truncated},
		{"str not backed", "a5 61 62", MessageLimits, Truncated},
		{"uint64 cut", "cf 00 01", MessageLimits, Truncated},
		{"trailing", "80 00", MessageLimits, Trailing},
		{"request too deep", "81 a1 61 91 91 01", RequestLimits, TooDeep},
		{"depth before limit", "81 a1 61 91 dd 0f ff ff ff", RequestLimits, TooDeep},
		{"request entries", "dc 00 21" + strings.Repeat("00", 33), RequestLimits, Limit},
		{"fine", "82 a1 76 01 a1 61 92 c3 c2", RequestLimits, OK},
		{"ext counted", "81 a1 65 d4 01 02", MessageLimits, OK},
	}
	for _, c := range cases {
		if got := Check(mustHex(t, c.hex), c.lim); got != c.want {
			t.Errorf("%s: code %d, want %d", c.name, got, c.want)
		}
	}
	big := make([]byte, MaxRequest+1)
	if got := Check(big, RequestLimits); got != TooLarge {
		t.Errorf("oversized request: %d", got)
	}
}

func codeOf(err error) int {
	var we *Error
	if errors.As(err, &we) {
		return we.Code
	}
	return -1
}

// Type rules of section 2: bin is not a string, nil is not absent, keys
// are strings and appear once.
func TestMessageTypeRules(t *testing.T) {
	base := "a1 76 01 a2 62 69 05 a4 6b 69 6e 64 a5 72 65 70 6c 79 a3 72 69 64 01 a3 65 72 72"
	cases := []struct {
		name string
		hex  string
		want int
	}{
		{"ok error reply", "85 " + base + " 14", OK},
		{"nil err", "85 " + base + " c0", BadType},
		{"bin detail", "86 " + base + " 14 a6 64 65 74 61 69 6c c4 01 41", BadType},
		{"duplicate key", "86 " + base + " 14 a3 65 72 72 14", Malformed},
		{"int key", "86 " + base + " 14 01 01", BadType},
		{"negative rid", "85 a1 76 01 a2 62 69 05 a4 6b 69 6e 64 a5 72 65 70 6c 79 a3 72 69 64 ff a3 65 72 72 00", BadValue},
		{"bi zero", "85 a1 76 01 a2 62 69 00 a4 6b 69 6e 64 a5 72 65 70 6c 79 a3 72 69 64 01 a3 65 72 72 00", BadValue},
		{"version 2", "85 a1 76 02 a2 62 69 05 a4 6b 69 6e 64 a5 72 65 70 6c 79 a3 72 69 64 01 a3 65 72 72 00", VersionCode},
		{"success without op", "85 " + base + " 00", MissingField},
		{"control char in detail", "86 " + base + " 14 a6 64 65 74 61 69 6c a1 0a", BadText},
		{"unknown kind", "83 a1 76 01 a2 62 69 05 a4 6b 69 6e 64 a1 78", BadValue},
	}
	for _, c := range cases {
		_, err := DecodeMessage(mustHex(t, c.hex))
		got := OK
		if err != nil {
			got = codeOf(err)
		}
		if got != c.want {
			t.Errorf("%s: code %d (%v), want %d", c.name, got, err, c.want)
		}
	}
}

func TestTextRules(t *testing.T) {
	bad := []string{"a\nb", "\x7f", "\xc2\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80"}
	for _, s := range bad {
		if ValidText(s, 64) {
			t.Errorf("%q accepted", s)
		}
	}
	for _, s := range []string{"", "cim-mount", "é", "\u00a0", "\U0010ffff"} {
		if !ValidText(s, 64) {
			t.Errorf("%q refused", s)
		}
	}
	if ValidText(strings.Repeat("x", 65), 64) {
		t.Error("length not enforced")
	}
	if ValidUVM("a b") == OK || ValidUVM("") == OK || ValidUVM(strings.Repeat("x", 257)) == OK || ValidUVM("uvm-7@vm") != OK {
		t.Error("uvm-id rules")
	}
}
