package wire

import "unicode/utf8"

// ValidUVM checks a uvm-id: 1-256 bytes, each 0x21-0x7e.
func ValidUVM(s string) int {
	if len(s) == 0 || len(s) > MaxUVM {
		return BadUVMID
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return BadUVMID
		}
	}
	return OK
}

// ValidText reports whether s is text(max): at most max bytes of
// well-formed UTF-8 without C0, DEL or C1 control characters.
func ValidText(s string, max int) bool {
	if len(s) > max {
		return false
	}
	// Go's decoder rejects overlong forms, surrogates and values above
	// U+10FFFF as RuneError of width 1, as Table 3-7 requires.
	for i := 0; i < len(s); {
		r, w := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && w == 1 {
			return false
		}
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return false
		}
		i += w
	}
	return true
}

// TextValidator returns a checker for text(max) giving BadText.
func TextValidator(max int) func(string) int {
	return func(s string) int {
		if ValidText(s, max) {
			return OK
		}
		return BadText
	}
}

// ValidName reports whether s is a name: 1-64 bytes of [A-Za-z_][A-Za-z0-9_]*.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alpha := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !alpha && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}
