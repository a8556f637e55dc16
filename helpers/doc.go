// Package helpers finds and runs apps' push helpers and parses their output.
//
// A helper is an app-provided executable called as `helper INFILE OUTFILE`: it
// reads the raw push payload from INFILE and writes the Lomiri helper output
// JSON (a message for the app and a notification to show) to OUTFILE. A
// Finder discovers helpers from Herald manifests and the Lomiri-compatible
// locations; a Runner runs them with limits (concurrency, one per app in
// arrival order, timeout with process-group kill, output size) and turns every
// failure into the raw payload plus an error. See docs/helpers.md.
//
// This package imports no other package of this project.
package helpers
