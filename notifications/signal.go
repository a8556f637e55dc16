package notifications

import "fmt"

// Signal bodies are checked before use: a body of the wrong length or types
// is an error, never a panic.

// parseActionInvoked checks an ActionInvoked(u id, s action_key) body.
func parseActionInvoked(body []any) (uint32, string, error) {
	if len(body) != 2 {
		return 0, "", fmt.Errorf("ActionInvoked has %d arguments, want 2", len(body))
	}
	id, ok1 := body[0].(uint32)
	key, ok2 := body[1].(string)
	if !ok1 || !ok2 {
		return 0, "", fmt.Errorf("ActionInvoked has arguments (%T, %T), want (uint32, string)", body[0], body[1])
	}
	return id, key, nil
}

// parseNotificationClosed checks a NotificationClosed(u id, u reason) body.
func parseNotificationClosed(body []any) (uint32, uint32, error) {
	if len(body) != 2 {
		return 0, 0, fmt.Errorf("NotificationClosed has %d arguments, want 2", len(body))
	}
	id, ok1 := body[0].(uint32)
	reason, ok2 := body[1].(uint32)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("NotificationClosed has arguments (%T, %T), want (uint32, uint32)", body[0], body[1])
	}
	return id, reason, nil
}

// parseNameOwnerChanged checks a NameOwnerChanged(s name, s old, s new) body.
func parseNameOwnerChanged(body []any) (name, oldOwner, newOwner string, err error) {
	if len(body) != 3 {
		return "", "", "", fmt.Errorf("NameOwnerChanged has %d arguments, want 3", len(body))
	}
	var ok [3]bool
	name, ok[0] = body[0].(string)
	oldOwner, ok[1] = body[1].(string)
	newOwner, ok[2] = body[2].(string)
	if !ok[0] || !ok[1] || !ok[2] {
		return "", "", "", fmt.Errorf("NameOwnerChanged has arguments (%T, %T, %T), want strings", body[0], body[1], body[2])
	}
	return name, oldOwner, newOwner, nil
}
