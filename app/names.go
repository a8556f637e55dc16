package app

// Step is how far an inbox message got through the daemon's pipeline. The
// store records it before the next step starts, so a restart resumes each
// message from its step. A message leaves the inbox when the app took it
// (PopAll or a Connector's reply), expired or was dropped.
type Step string

// The pipeline steps, in order.
const (
	StepReceived  Step = "received"  // durably in the inbox, acked to the server
	StepProcessed Step = "processed" // the helper ran; message and notification kept
	StepPresented Step = "presented" // the notification was shown (or there was none)
	StepQueued    Step = "queued"    // waiting for the app (PopAll, Connector Message)
)

// Valid reports whether s is one of the steps.
func (s Step) Valid() bool {
	switch s {
	case StepReceived, StepProcessed, StepPresented, StepQueued:
		return true
	}
	return false
}

// Kind is the API an app registered through.
type Kind string

// The registration kinds.
const (
	KindLomiri      Kind = "lomiri"      // com.lomiri/com.ubuntu PushNotifications.Register
	KindUnifiedPush Kind = "unifiedpush" // org.unifiedpush.Distributor1/2.Register
)

// Backend names a kind of push service the daemon holds a connection to.
type Backend string

// The backends. Autopush is the one the top-level "server" configures.
const (
	BackendAutopush Backend = "autopush" // herald-server or any autopush server (websocket)
	BackendLomiri   Backend = "lomiri"   // the Lomiri/Ubuntu push service wire protocol
	BackendNtfy     Backend = "ntfy"     // an ntfy server
)

// Counter names one of the daemon's persistent counters (the management
// interface's Counters and `herald status`).
type Counter string

// The counters.
const (
	CounterMessagesReceived  Counter = "messages_received"  // new messages stored in the inbox
	CounterMessagesDelivered Counter = "messages_delivered" // taken by their app
	CounterMessagesExpired   Counter = "messages_expired"   // dropped because their TTL ran out
	CounterMessagesDropped   Counter = "messages_dropped"   // dropped for another reason (app gone)
	CounterDuplicates        Counter = "duplicates"         // redelivered by a server, not processed again
	CounterRedeliveries      Counter = "redeliveries"       // delivery attempts after a failed one
	CounterConnections       Counter = "connections"        // successful connections to a server
	CounterEndpointChanges   Counter = "endpoint_changes"   // registrations whose endpoint changed
	CounterPresentFailures   Counter = "present_failures"   // notifications that could not be shown
	CounterHelperRuns        Counter = "helper_runs"
	CounterHelperFailures    Counter = "helper_failures"
	CounterHelperTimeouts    Counter = "helper_timeouts"
	CounterInboxFull         Counter = "inbox_full_dropped" // oldest messages dropped over an app's inbox cap
)
