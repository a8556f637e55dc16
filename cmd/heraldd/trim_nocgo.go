//go:build !cgo

package main

// mallocTrim: without cgo there is no C allocator to trim.
func mallocTrim() {}
