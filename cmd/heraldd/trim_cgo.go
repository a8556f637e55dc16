//go:build cgo

package main

/*
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static void herald_malloc_trim(void) {
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}
*/
import "C"

// mallocTrim gives the free memory of glibc's malloc arenas (SQLite's page
// caches and statements allocate there) back to the system.
func mallocTrim() { C.herald_malloc_trim() }
