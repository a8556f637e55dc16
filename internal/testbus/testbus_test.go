package testbus

import "testing"

func TestStartAndOwnName(t *testing.T) {
	b := Start(t, WithServiceDir())
	conn := b.Conn(t)
	reply, err := conn.RequestName("org.herald.TestBus", 0)
	if err != nil {
		t.Fatal(err)
	}
	if reply != 1 { // primary owner
		t.Fatalf("RequestName reply %d, want primary owner", reply)
	}
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.herald.TestBus").Store(&has); err != nil || !has {
		t.Fatalf("NameHasOwner = %v, %v", has, err)
	}
}
