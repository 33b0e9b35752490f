//go:build !faultinject

package main

// failAfter is the fault-injection hook of test builds; in release builds
// it never fails and compiles to nothing.
func failAfter(string) error { return nil }
