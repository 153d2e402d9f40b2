package apitypes

// FileResult answers PUT /instances/{id}/files: the file now in place.
type FileResult struct {
	Instance string `json:"instance"`
	Path     string `json:"path"`
	// Size is the bytes written.
	Size int64 `json:"size"`
}
