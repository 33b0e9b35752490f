package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestRollbackReportsEveryStep: every step runs, newest first, even after
// one fails; the ADD's code stays and its message says what was left.
func TestRollbackReportsEveryStep(t *testing.T) {
	var ran []string
	var undo rollback
	for _, name := range []string{"first", "second", "third"} {
		undo.push("undo "+name, func() error {
			ran = append(ran, name)
			if name == "second" {
				return errors.New("map is closed")
			}
			return nil
		})
	}
	err := undo.run(types.NewError(errDatapath, "attach failed", ""))
	if strings.Join(ran, ",") != "third,second,first" {
		t.Errorf("steps ran as %v, want newest first, all of them", ran)
	}
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != errDatapath {
		t.Fatalf("rollback error %v, want the ADD's code %d", err, errDatapath)
	}
	for _, want := range []string{"attach failed", "could not undo 1 of 3", "undo second: map is closed"} {
		if !strings.Contains(cniErr.Msg, want) {
			t.Errorf("message %q does not say %q", cniErr.Msg, want)
		}
	}
	if strings.Contains(cniErr.Msg, "undid") {
		t.Errorf("message %q claims the steps were undone", cniErr.Msg)
	}
}

// TestRollbackCleanSaysUndone: with every step undone, the message says so
// and wraps the original error.
func TestRollbackCleanSaysUndone(t *testing.T) {
	var undo rollback
	undo.push("undo one", func() error { return nil })
	cause := errors.New("wait for port")
	err := undo.run(cause)
	if !errors.Is(err, cause) || !strings.Contains(err.Error(), "undid 1 step(s)") {
		t.Errorf("rollback error %v, want %v with the steps undone", err, cause)
	}
	if got := rollback(nil).run(cause); got != cause {
		t.Errorf("empty rollback changed the error to %v", got)
	}
}
