package errdefs

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

var errNoThing = New(ErrNotFound, "no-thing", "no such thing")

type explained struct{ error }

func (explained) Explain() string { return "what users read" }

func TestClassKindDetailsThroughWrapping(t *testing.T) {
	err := WithDetails(fmt.Errorf("reading: %w", errNoThing), "field", "name", "n", 3)
	if Class(err) != ErrNotFound || !errors.Is(err, errNoThing) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("class of %v = %v", err, Class(err))
	}
	if errors.Is(err, ErrConflict) {
		t.Fatal("an error is in one class only")
	}
	if Kind(err) != "no-thing" || Field(err) != "name" || Details(err)["n"] != 3 {
		t.Fatalf("kind %q, details %v", Kind(err), Details(err))
	}
	if err.Error() != "reading: no such thing" || Message(err) != err.Error() {
		t.Fatalf("message %q", Message(err))
	}
	if m := Message(fmt.Errorf("x: %w", explained{errNoThing})); m != "what users read" {
		t.Fatalf("explained message %q", m)
	}
	if m := WithMessage(err, "other words"); m.Error() != "other words" || Kind(m) != "no-thing" || Field(m) != "name" {
		t.Fatalf("WithMessage lost the error: %v", m)
	}
}

func TestContextErrorsHaveClasses(t *testing.T) {
	if Class(fmt.Errorf("call: %w", context.DeadlineExceeded)) != ErrTimeout || Class(context.Canceled) != ErrCanceled {
		t.Fatal("context errors are not classed")
	}
	if Class(errors.New("plain")) != nil || Class(nil) != nil {
		t.Fatal("an unclassed error has a class")
	}
}

func TestOuterDetailsWin(t *testing.T) {
	err := WithDetails(WithDetails(errNoThing, "field", "inner"), "field", "outer")
	if Field(err) != "outer" {
		t.Fatalf("field %q", Field(err))
	}
	if InvalidField("env.X", "bad").Error() != "bad" || Field(InvalidField("env.X", "bad")) != "env.X" || Class(InvalidField("a", "b")) != ErrInvalid {
		t.Fatal("InvalidField")
	}
}
