// Package app is Herald's shared vocabulary: the names every layer of the
// daemon uses for the same things, defined once.
//
//   - application ids (ParseID): click "pkg_app[_version]", legacy "_name"
//     and desktop-style "org.example.App", with the one grammar every D-Bus
//     surface, the helper finder, presentation and the store accept;
//   - libnih object path quoting (Quote, Unquote) and D-Bus bus name
//     validation (ValidBusName);
//   - the one reader of freedesktop key files (ParseKeyFile) and desktop
//     entries (ParseDesktopEntry), and ReadFile for bounded reads;
//   - the notification card model (Notification, Card, Sound, Vibration,
//     EmblemCounter) with its JSON form, which is the helper output schema,
//     and its stored form (EncodeNotification, EncodeCard) with a format
//     version;
//   - typed names for pipeline steps (Step), registration kinds (Kind),
//     backends (Backend) and counters (Counter).
//
// It imports no other package of this project, and every package of the
// project may import it.
package app
