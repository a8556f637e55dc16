package main

import "golang.org/x/sys/unix"

func unixAccessW(path string) error { return unix.Access(path, unix.W_OK) }
