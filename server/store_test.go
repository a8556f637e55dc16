package server

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// storeKind opens a fresh, running store of one implementation.
type storeKind struct {
	name string
	open func(t *testing.T) Store
}

// storeKinds are the Store implementations every store test runs against.
func storeKinds() []storeKind {
	return []storeKind{
		{"sqlite", func(t *testing.T) Store {
			st, _ := runStore(t, filepath.Join(t.TempDir(), "s.db"))
			return st
		}},
		{"postgres", func(t *testing.T) Store { return runPostgres(t) }},
	}
}

// forEachStore runs fn as a subtest per store implementation.
func forEachStore(t *testing.T, fn func(t *testing.T, st Store)) {
	for _, k := range storeKinds() {
		t.Run(k.name, func(t *testing.T) { fn(t, k.open(t)) })
	}
}

func newMsg(uaid, chid, topic string, ttl time.Duration) *Message {
	id := newMessageID()
	return &Message{ID: id, UAID: uaid, ChannelID: chid, Version: id, Topic: topic,
		Data: []byte("data " + id), Expiry: time.Now().Add(ttl)}
}

func pendingIDs(t *testing.T, st Store, uaid string) []string {
	t.Helper()
	ms, err := st.Pending(context.Background(), uaid, 0, 1000, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	return ids
}

func mustPut(t *testing.T, st Store, m *Message, o PutOptions) (bool, int) {
	t.Helper()
	stored, dropped, err := st.Put(context.Background(), m, o, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return stored, dropped
}

func TestStoreDevicesAndChannels(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		uaid := protocol.NewUAID()
		if ok, err := st.HasDevice(ctx, uaid); err != nil || ok {
			t.Fatalf("HasDevice before add = %v, %v", ok, err)
		}
		if err := st.AddDevice(ctx, uaid, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := st.AddDevice(ctx, uaid, time.Now()); err != nil {
			t.Fatalf("AddDevice again: %v", err)
		}
		if ok, err := st.HasDevice(ctx, uaid); err != nil || !ok {
			t.Fatalf("HasDevice after add = %v, %v", ok, err)
		}
		chid := protocol.NewChannelID()
		key := make([]byte, 65)
		key[0] = 4
		ch, err := st.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: chid, Key: key}, 0)
		if err != nil {
			t.Fatal(err)
		}
		again, err := st.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: chid, Key: key}, 0)
		if err != nil || again.Token != ch.Token {
			t.Fatalf("Register again = %+v, %v; want the first token %s", again, err, ch.Token)
		}
		if _, err := st.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: chid}, 0); !errors.Is(err, ErrConflict) {
			t.Fatalf("Register with another key: %v, want ErrConflict", err)
		}
		got, err := st.Channel(ctx, ch.Token)
		if err != nil || got.UAID != uaid || got.ChannelID != chid || string(got.Key) != string(key) {
			t.Fatalf("Channel = %+v, %v", got, err)
		}
		if _, err := st.Channel(ctx, newToken()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown token: %v, want ErrNotFound", err)
		}
		mustPut(t, st, newMsg(uaid, chid, "", time.Hour), PutOptions{})
		if err := st.Unregister(ctx, uaid, chid); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Channel(ctx, ch.Token); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unregistered token: %v, want ErrNotFound", err)
		}
		if ids := pendingIDs(t, st, uaid); len(ids) != 0 {
			t.Fatalf("unregister left %d messages", len(ids))
		}
		if err := st.Unregister(ctx, uaid, chid); err != nil {
			t.Fatalf("unregister of an unknown channel: %v", err)
		}
	})
}

func TestStorePutPendingDelete(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
		var want []*Message
		for i := range 5 {
			m := newMsg(uaid, chid, "", time.Hour)
			if i == 2 {
				m.Headers = map[string]string{"encoding": "aesgcm", "crypto_key": "dh=x"}
			}
			mustPut(t, st, m, PutOptions{})
			if len(want) > 0 && m.Seq <= want[len(want)-1].Seq {
				t.Fatalf("Seq %d not above %d", m.Seq, want[len(want)-1].Seq)
			}
			want = append(want, m)
		}
		got, err := st.Pending(ctx, uaid, 0, 3, time.Now())
		if err != nil || len(got) != 3 {
			t.Fatalf("Pending limit 3 = %d, %v", len(got), err)
		}
		got, err = st.Pending(ctx, uaid, got[2].Seq, 10, time.Now())
		if err != nil || len(got) != 2 || got[0].ID != want[3].ID {
			t.Fatalf("Pending after the third = %d, %v", len(got), err)
		}
		all, _ := st.Pending(ctx, uaid, 0, 10, time.Now())
		for i, m := range all {
			w := want[i]
			if m.ID != w.ID || m.Seq != w.Seq || m.Version != w.Version || m.ChannelID != chid || m.UAID != uaid ||
				string(m.Data) != string(w.Data) || len(m.Headers) != len(w.Headers) || m.Headers["crypto_key"] != w.Headers["crypto_key"] ||
				m.Expiry.UnixMilli() != w.Expiry.UnixMilli() {
				t.Fatalf("message %d = %+v, want %+v", i, m, w)
			}
		}
		if err := st.Delete(ctx, uaid, []Ref{{chid, want[0].Version}, {chid, want[4].Version}}); err != nil {
			t.Fatal(err)
		}
		if ids := pendingIDs(t, st, uaid); !slices.Equal(ids, []string{want[1].ID, want[2].ID, want[3].ID}) {
			t.Fatalf("after delete: %v", ids)
		}
		// Nothing beyond the last message.
		got, err = st.PendingBeyondAcks(ctx, uaid, want[4].Seq, 10, time.Now())
		if err != nil || len(got) != 0 {
			t.Fatalf("PendingBeyondAcks past the end = %d, %v", len(got), err)
		}
		if err := st.Cancel(ctx, want[2].ID); err != nil {
			t.Fatal(err)
		}
		if err := st.Cancel(ctx, want[2].ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second cancel: %v, want ErrNotFound", err)
		}
		if ids := pendingIDs(t, st, uaid); !slices.Equal(ids, []string{want[1].ID, want[3].ID}) {
			t.Fatalf("after cancel: %v", ids)
		}
	})
}

func TestStoreTopicsAndLimits(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
		a := newMsg(uaid, chid, "t1", time.Hour)
		b := newMsg(uaid, chid, "t2", time.Hour)
		c := newMsg(uaid, chid, "t1", time.Hour)
		mustPut(t, st, a, PutOptions{Replace: true})
		mustPut(t, st, b, PutOptions{Replace: true})
		mustPut(t, st, c, PutOptions{Replace: true})
		if ids := pendingIDs(t, st, uaid); !slices.Equal(ids, []string{b.ID, c.ID}) {
			t.Fatalf("topic replacement: %v, want [b c]", ids)
		}
		// ClearPending empties the channel first.
		d := newMsg(uaid, chid, "", time.Hour)
		mustPut(t, st, d, PutOptions{ClearPending: true})
		if ids := pendingIDs(t, st, uaid); !slices.Equal(ids, []string{d.ID}) {
			t.Fatalf("clear pending: %v", ids)
		}
		// RejectAt counts unexpired messages.
		if _, _, err := st.Put(context.Background(), newMsg(uaid, chid, "", time.Hour), PutOptions{RejectAt: 1}, time.Now()); !errors.Is(err, ErrTooManyPending) {
			t.Fatalf("RejectAt: %v, want ErrTooManyPending", err)
		}
		if ids := pendingIDs(t, st, uaid); len(ids) != 1 {
			t.Fatalf("a rejected put changed the channel: %v", ids)
		}
		// DropOver keeps the newest.
		var ids []string
		total := 0
		for range 4 {
			m := newMsg(uaid, chid, "", time.Hour)
			_, dropped := mustPut(t, st, m, PutOptions{DropOver: 3})
			total += dropped
			ids = append(ids, m.ID)
		}
		if got := pendingIDs(t, st, uaid); total != 2 || !slices.Equal(got, ids[1:]) {
			t.Fatalf("DropOver: dropped %d, pending %v, want 2 and %v", total, got, ids[1:])
		}
	})
}

func TestStoreSimplePushKeepsNewest(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
		put := func(v string) bool {
			m := newMsg(uaid, chid, simplePushTopic, time.Hour)
			m.Version = v
			stored, _ := mustPut(t, st, m, PutOptions{KeepNewerVersion: true})
			return stored
		}
		if !put("5") || put("4") || put("5") || !put("7") {
			t.Fatal("KeepNewerVersion kept the wrong versions")
		}
		ms, err := st.Pending(context.Background(), uaid, 0, 10, time.Now())
		if err != nil || len(ms) != 1 || ms[0].Version != "7" {
			t.Fatalf("pending = %v, %v; want only version 7", ms, err)
		}
	})
}

func TestStoreExpiryAndSweep(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
		short := newMsg(uaid, chid, "", time.Minute)
		long := newMsg(uaid, chid, "", time.Hour)
		mustPut(t, st, short, PutOptions{})
		mustPut(t, st, long, PutOptions{})
		later := time.Now().Add(2 * time.Minute)
		ms, err := st.Pending(ctx, uaid, 0, 10, later)
		if err != nil || len(ms) != 1 || ms[0].ID != long.ID {
			t.Fatalf("pending after expiry = %v, %v", ms, err)
		}
		n, err := st.Sweep(ctx, later)
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1", n, err)
		}
		if ids := pendingIDs(t, st, uaid); !slices.Equal(ids, []string{long.ID}) {
			t.Fatalf("after sweep: %v", ids)
		}
	})
}

func TestStoreRoutes(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		uaid := protocol.NewUAID()
		if _, err := st.Route(ctx, uaid); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Route of an unconnected device: %v, want ErrNotFound", err)
		}
		a := Route{Node: "http://a:1", Conn: 1}
		b := Route{Node: "http://b:1", Conn: 2}
		if prev, err := st.ClaimRoute(ctx, uaid, a); err != nil || prev != (Route{}) {
			t.Fatalf("first claim = %+v, %v", prev, err)
		}
		if prev, err := st.ClaimRoute(ctx, uaid, b); err != nil || prev != a {
			t.Fatalf("second claim = %+v, %v; want %+v", prev, err, a)
		}
		// A or its node clearing its own route leaves b's.
		if err := st.ClearRoute(ctx, uaid, a); err != nil {
			t.Fatal(err)
		}
		if n, err := st.ClearNode(ctx, a.Node); err != nil || n != 0 {
			t.Fatalf("ClearNode(a) = %d, %v", n, err)
		}
		if r, err := st.Route(ctx, uaid); err != nil || r != b {
			t.Fatalf("Route = %+v, %v; want %+v", r, err, b)
		}
		other := protocol.NewUAID()
		st.ClaimRoute(ctx, other, Route{Node: b.Node, Conn: 3})
		if n, err := st.ClearNode(ctx, b.Node); err != nil || n != 2 {
			t.Fatalf("ClearNode(b) = %d, %v; want 2", n, err)
		}
		if _, err := st.Route(ctx, uaid); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Route after ClearNode: %v", err)
		}
		for i, n := range []string{"http://c:1", "http://a:1", "http://c:1", "http://b:1"} {
			st.ClaimRoute(ctx, protocol.NewUAID(), Route{Node: n, Conn: int64(i)})
		}
		if nodes, err := st.Nodes(ctx); err != nil || !slices.Equal(nodes, []string{"http://a:1", "http://b:1", "http://c:1"}) {
			t.Fatalf("Nodes = %v, %v", nodes, err)
		}
		st.ClaimRoute(ctx, uaid, a)
		if err := st.ClearRoute(ctx, uaid, a); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Route(ctx, uaid); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Route after ClearRoute: %v", err)
		}
		s1, err := st.NodeSecret(ctx)
		if err != nil || len(s1) < 40 {
			t.Fatalf("NodeSecret = %q, %v", s1, err)
		}
		if s2, err := st.NodeSecret(ctx); err != nil || s2 != s1 {
			t.Fatalf("second NodeSecret = %q, %v; want the first", s2, err)
		}
	})
}

// Export of one store imported into a fresh one of each kind gives the same
// devices, channels and pending messages.
func TestStoreExportImport(t *testing.T) {
	for _, from := range storeKinds() {
		for _, to := range storeKinds() {
			t.Run(from.name+"-to-"+to.name, func(t *testing.T) {
				ctx := context.Background()
				src := from.open(t)
				uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
				src.AddDevice(ctx, uaid, time.Now())
				ch, err := src.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: chid}, 0)
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for i := range 3 {
					m := newMsg(uaid, chid, "", time.Hour)
					if i == 1 {
						m.Headers = map[string]string{"encoding": "aes128gcm"}
					}
					mustPut(t, src, m, PutOptions{})
					ids = append(ids, m.ID)
				}
				mustPut(t, src, newMsg(uaid, chid, "", time.Second), PutOptions{}) // expired at export time
				var recs []Record
				if err := src.Export(ctx, time.Now().Add(time.Minute), func(r Record) error {
					recs = append(recs, r)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if len(recs) != 5 {
					t.Fatalf("exported %d records, want 1 device, 1 channel, 3 messages", len(recs))
				}
				dst := to.open(t)
				if err := dst.Import(ctx, recs); err != nil {
					t.Fatal(err)
				}
				if err := dst.Import(ctx, recs); err != nil {
					t.Fatalf("second import: %v", err)
				}
				if ok, _ := dst.HasDevice(ctx, uaid); !ok {
					t.Fatal("device not imported")
				}
				if got, err := dst.Channel(ctx, ch.Token); err != nil || got.UAID != uaid || got.ChannelID != chid {
					t.Fatalf("channel = %+v, %v", got, err)
				}
				if got := pendingIDs(t, dst, uaid); !slices.Equal(got, ids) {
					t.Fatalf("pending after import: %v, want %v", got, ids)
				}
			})
		}
	}
}

func TestStoreLomiriBroadcastsAndPendingLimit(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		now := time.Now()
		if top, ps, err := st.Broadcasts(ctx, "0", now); err != nil || top != 0 || len(ps) != 0 {
			t.Fatalf("empty channel: %d %v %v", top, ps, err)
		}
		for i := range 5 {
			exp := now.Add(time.Hour)
			if i == 3 {
				exp = now.Add(-time.Second) // already expired
			}
			level, err := st.PutBroadcast(ctx, "0", []byte{'0' + byte(i)}, exp, 3)
			if err != nil || level != int64(i+1) {
				t.Fatalf("PutBroadcast %d = %d, %v", i, level, err)
			}
		}
		top, ps, err := st.Broadcasts(ctx, "0", now)
		if err != nil || top != 5 {
			t.Fatalf("top = %d, %v; want 5", top, err)
		}
		var got []string
		for _, p := range ps {
			got = append(got, string(p.Data))
		}
		// Kept: the newest 3 (levels 3, 4, 5); level 4 expired.
		if !slices.Equal(got, []string{"2", "4"}) || ps[0].Level != 3 || ps[1].Level != 5 {
			t.Fatalf("payloads %v %+v, want [2 4] at levels 3 and 5", got, ps)
		}
		if top, _, _ := st.Broadcasts(ctx, "other", now); top != 0 {
			t.Fatalf("another channel has level %d", top)
		}

		// The pending limit names the newest pending message.
		uaid, chid := LomiriUAIDPrefix+"DEV", "a.b_c"
		m1, m2 := newMsg(uaid, chid, "", time.Hour), newMsg(uaid, chid, "", time.Hour)
		mustPut(t, st, m1, PutOptions{RejectAt: 2})
		mustPut(t, st, m2, PutOptions{RejectAt: 2})
		_, _, err = st.Put(ctx, newMsg(uaid, chid, "", time.Hour), PutOptions{RejectAt: 2}, time.Now())
		var le *PendingLimitError
		if !errors.Is(err, ErrTooManyPending) || !errors.As(err, &le) || string(le.Last) != string(m2.Data) {
			t.Fatalf("Put over the limit = %v, want a PendingLimitError naming %q", err, m2.Data)
		}
	})
}
