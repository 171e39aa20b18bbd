package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

type golden struct {
	name, kind string
	bytes      []byte
	json       string
}

func protocolPath() string {
	if p := os.Getenv("UL_PROTOCOL_MD"); p != "" {
		return p
	}
	return filepath.Join("..", "..", "..", "..", "common", "PROTOCOL.md")
}

// readGolden returns every "```golden name=N kind=K" block of PROTOCOL.md
// with the ```json block that follows it.
func readGolden(t *testing.T) []golden {
	t.Helper()
	f, err := os.Open(protocolPath())
	if err != nil {
		t.Fatalf("PROTOCOL.md: %v", err)
	}
	defer f.Close()
	var out []golden
	var cur *golden
	var hexbuf, jsonbuf strings.Builder
	inJSON := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```golden "):
			cur = &golden{}
			for _, w := range strings.Fields(line[len("```golden "):]) {
				if strings.HasPrefix(w, "name=") {
					cur.name = w[len("name="):]
				} else if strings.HasPrefix(w, "kind=") {
					cur.kind = w[len("kind="):]
				}
			}
			hexbuf.Reset()
		case cur != nil && !inJSON && cur.bytes == nil && line == "```":
			b, err := hex.DecodeString(hexbuf.String())
			if err != nil {
				t.Fatalf("%s: bad hex: %v", cur.name, err)
			}
			cur.bytes = b
		case cur != nil && cur.bytes == nil:
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			hexbuf.WriteString(strings.Join(strings.Fields(line), ""))
		case cur != nil && line == "```json":
			inJSON = true
			jsonbuf.Reset()
		case cur != nil && inJSON && line == "```":
			cur.json = jsonbuf.String()
			out = append(out, *cur)
			cur, inJSON = nil, false
		case inJSON:
			jsonbuf.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("unterminated golden block %s", cur.name)
	}
	return out
}

// A msgpack value with map order kept, so that it can be written back.
type node struct {
	kind  byte // 'u' uint, 'i' negative int, 's' str, 'b' bool, 'a' array, 'm' map
	u     uint64
	i     int64
	s     string
	b     bool
	items []node
	keys  []string
}

func decodeNode(d *msgpack.Decoder) (node, error) {
	c, err := d.PeekCode()
	if err != nil {
		return node{}, err
	}
	switch {
	case c == msgpcode.True || c == msgpcode.False:
		b, err := d.DecodeBool()
		return node{kind: 'b', b: b}, err
	case msgpcode.IsString(c):
		s, err := d.DecodeString()
		return node{kind: 's', s: s}, err
	case isInt(c):
		if isSigned(c) {
			v, err := d.DecodeInt64()
			if v >= 0 {
				return node{kind: 'u', u: uint64(v)}, err
			}
			return node{kind: 'i', i: v}, err
		}
		v, err := d.DecodeUint64()
		return node{kind: 'u', u: v}, err
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := d.DecodeArrayLen()
		if err != nil {
			return node{}, err
		}
		out := node{kind: 'a'}
		for i := 0; i < n; i++ {
			x, err := decodeNode(d)
			if err != nil {
				return node{}, err
			}
			out.items = append(out.items, x)
		}
		return out, nil
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := d.DecodeMapLen()
		if err != nil {
			return node{}, err
		}
		out := node{kind: 'm'}
		for i := 0; i < n; i++ {
			k, err := d.DecodeString()
			if err != nil {
				return node{}, err
			}
			x, err := decodeNode(d)
			if err != nil {
				return node{}, err
			}
			out.keys = append(out.keys, k)
			out.items = append(out.items, x)
		}
		return out, nil
	}
	return node{}, fmt.Errorf("unexpected msgpack code %#x", c)
}

func encodeNode(e *msgpack.Encoder, n node) error {
	switch n.kind {
	case 'u':
		return e.EncodeUint(n.u)
	case 'i':
		return e.EncodeInt(n.i)
	case 's':
		return e.EncodeString(n.s)
	case 'b':
		return e.EncodeBool(n.b)
	case 'a':
		if err := e.EncodeArrayLen(len(n.items)); err != nil {
			return err
		}
		for _, x := range n.items {
			if err := encodeNode(e, x); err != nil {
				return err
			}
		}
		return nil
	}
	if err := e.EncodeMapLen(len(n.items)); err != nil {
		return err
	}
	for i, x := range n.items {
		if err := e.EncodeString(n.keys[i]); err != nil {
			return err
		}
		if err := encodeNode(e, x); err != nil {
			return err
		}
	}
	return nil
}

// jsonNode reads the JSON block in order, numbers kept exact.
func jsonNode(d *json.Decoder) (node, error) {
	tok, err := d.Token()
	if err != nil {
		return node{}, err
	}
	switch v := tok.(type) {
	case json.Delim:
		out := node{kind: 'a'}
		if v == '{' {
			out.kind = 'm'
		}
		for d.More() {
			if out.kind == 'm' {
				k, err := d.Token()
				if err != nil {
					return node{}, err
				}
				out.keys = append(out.keys, k.(string))
			}
			x, err := jsonNode(d)
			if err != nil {
				return node{}, err
			}
			out.items = append(out.items, x)
		}
		_, err := d.Token()
		return out, err
	case json.Number:
		if strings.HasPrefix(string(v), "-") {
			i, err := v.Int64()
			return node{kind: 'i', i: i}, err
		}
		var u uint64
		_, err := fmt.Sscan(string(v), &u)
		return node{kind: 'u', u: u}, err
	case string:
		return node{kind: 's', s: v}, nil
	case bool:
		return node{kind: 'b', b: v}, nil
	}
	return node{}, fmt.Errorf("unexpected JSON token %v", tok)
}

func TestGoldenVectorsRoundTrip(t *testing.T) {
	vectors := readGolden(t)
	if len(vectors) < 30 {
		t.Fatalf("only %d golden vectors found in %s", len(vectors), protocolPath())
	}
	for _, g := range vectors {
		g := g
		t.Run(g.name, func(t *testing.T) {
			lim := MessageLimits
			if g.kind == "request" {
				lim = RequestLimits
			}
			if code := Check(g.bytes, lim); code != OK {
				t.Fatalf("structural check: code %d", code)
			}
			got, err := decodeNode(msgpack.NewDecoder(bytes.NewReader(g.bytes)))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			jd := json.NewDecoder(strings.NewReader(g.json))
			jd.UseNumber()
			want, err := jsonNode(jd)
			if err != nil {
				t.Fatalf("JSON block: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded value differs from the JSON block:\n got %+v\nwant %+v", got, want)
			}
			var buf bytes.Buffer
			if err := encodeNode(msgpack.NewEncoder(&buf), want); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), g.bytes) {
				t.Fatalf("re-encoded from the JSON block:\n got %x\nwant %x", buf.Bytes(), g.bytes)
			}
		})
	}
}

// Every request vector: decoded as a broker would, then written by the
// client's own encoder, byte for byte.
func TestGoldenRequestsThroughEncoder(t *testing.T) {
	n := 0
	for _, g := range readGolden(t) {
		if g.kind != "request" {
			continue
		}
		n++
		r, err := DecodeRequest(g.bytes)
		if err != nil {
			t.Errorf("%s: decode: %v", g.name, err)
			continue
		}
		b, err := EncodeRequest(r)
		if err != nil {
			t.Errorf("%s: encode: %v", g.name, err)
			continue
		}
		if !bytes.Equal(b, g.bytes) {
			t.Errorf("%s:\n got %x\nwant %x", g.name, b, g.bytes)
		}
	}
	if n < 15 {
		t.Fatalf("only %d request vectors", n)
	}
}

// Every broker-message vector decodes; the fields this client uses carry
// the values of the JSON block.
func TestGoldenMessagesDecode(t *testing.T) {
	for _, g := range readGolden(t) {
		if g.kind == "request" {
			continue
		}
		m, err := DecodeMessage(g.bytes)
		if err != nil {
			t.Errorf("%s: %v", g.name, err)
			continue
		}
		var j map[string]interface{}
		d := json.NewDecoder(strings.NewReader(g.json))
		d.UseNumber()
		if err := d.Decode(&j); err != nil {
			t.Fatal(err)
		}
		num := func(key string) uint64 {
			var u uint64
			if v, ok := j[key]; ok {
				fmt.Sscan(string(v.(json.Number)), &u)
			}
			return u
		}
		str := func(key string) string { s, _ := j[key].(string); return s }
		checks := map[string][2]interface{}{
			"bi":   {m.BI, num("bi")},
			"kind": {m.Kind, str("kind")},
		}
		switch m.Kind {
		case "reply", "grant", "acquire-failed":
			checks["rid"] = [2]interface{}{m.RID, num("rid")}
			checks["err"] = [2]interface{}{uint64(m.Err), num("err")}
			checks["detail"] = [2]interface{}{m.Detail, str("detail")}
			checks["op"] = [2]interface{}{m.Op, str("op")}
			checks["lease"] = [2]interface{}{m.Lease, num("lease")}
			if m.Op != "show" && m.Op != "list" && m.Op != "stats" {
				checks["uvm"] = [2]interface{}{m.UVM, str("uvm")}
			}
			checks["fence"] = [2]interface{}{m.Fence, num("fence")}
			checks["position"] = [2]interface{}{uint64(m.Position), num("position")}
			checks["queued"] = [2]interface{}{m.Queued, j["queued"] == true}
			checks["pid"] = [2]interface{}{uint64(m.PID), num("pid")}
			checks["server"] = [2]interface{}{m.Server, str("server")}
			if h, ok := j["holder"].(map[string]interface{}); ok {
				if m.Holder == nil {
					t.Errorf("%s: holder not decoded", g.name)
				} else {
					checks["holder.pid"] = [2]interface{}{fmt.Sprint(m.Holder.PID), fmt.Sprint(h["pid"])}
					checks["holder.comm"] = [2]interface{}{m.Holder.Comm, h["comm"]}
					checks["holder.label"] = [2]interface{}{m.Holder.Label, h["label"]}
					checks["holder.phase"] = [2]interface{}{m.Holder.Phase, h["phase"]}
					checks["holder.lease"] = [2]interface{}{fmt.Sprint(m.Holder.Lease), fmt.Sprint(h["lease"])}
				}
			} else if m.Holder != nil {
				t.Errorf("%s: holder decoded from nothing", g.name)
			}
		case "revoked":
			checks["lease"] = [2]interface{}{m.Lease, num("lease")}
			checks["uvm"] = [2]interface{}{m.UVM, str("uvm")}
			checks["reason"] = [2]interface{}{m.Reason, str("reason")}
		case "event":
			ev := j["event"].(map[string]interface{})
			checks["event.type"] = [2]interface{}{m.Event.Type, ev["type"]}
			checks["event.uvm"] = [2]interface{}{m.Event.UVM, ev["uvm"]}
			checks["event.pid"] = [2]interface{}{fmt.Sprint(m.Event.PID), fmt.Sprint(orZero(ev["pid"]))}
			checks["event.reason"] = [2]interface{}{m.Event.Reason, orEmpty(ev["reason"])}
		}
		for k, c := range checks {
			if !reflect.DeepEqual(c[0], c[1]) {
				t.Errorf("%s: %s = %v, JSON says %v", g.name, k, c[0], c[1])
			}
		}
	}
}

func orZero(v interface{}) interface{} {
	if v == nil {
		return 0
	}
	return v
}

func orEmpty(v interface{}) interface{} {
	if v == nil {
		return ""
	}
	return v
}
