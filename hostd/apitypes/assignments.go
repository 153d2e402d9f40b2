package apitypes

import "github.com/vmpersona/vmpersona/hostd/assignment"

// Assignment gives the instances its selector selects a persona: GET, PUT
// /assignments/{name}, each entry of GET /assignments. Among the
// assignments selecting one instance the highest priority wins (at equal
// priority, the name that sorts first); an explicit activation or
// deactivation of that instance still wins for it.
type Assignment = assignment.Assignment

// AssignmentSelector says which instances an assignment applies to: every
// criterion given must hold; a list holds when any entry does; a label map
// when every key has that value.
type AssignmentSelector = assignment.Selector

// AssignmentList answers GET /assignments: assignments sorted by name.
type AssignmentList struct {
	Assignments []Assignment `json:"assignments"`
}

// InstanceLabels is the body of PUT /instances/{id}/labels and its answer:
// the instance's labels, which assignments select by.
type InstanceLabels struct {
	Labels map[string]string `json:"labels"`
}
