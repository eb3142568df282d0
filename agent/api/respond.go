package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/thinlab/thinlab/sdk/labels"
	"io"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/rs/xid"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// maxBody bounds request bodies; every request of this API is small.
const maxBody = 1 << 20

// writeError writes DLE's error body ({code, message}) plus Thinlab's
// optional detail (the bad field).
func writeError(c *gin.Context, status int, code, message, detail string) {
	c.JSON(status, agentapi.ErrorBody{Code: code, Message: message, Detail: detail})
}

func badRequest(c *gin.Context, field, message string) {
	writeError(c, http.StatusBadRequest, agentapi.CodeBadRequest, message, field)
}

func notFound(c *gin.Context, message string) {
	writeError(c, http.StatusNotFound, agentapi.CodeNotFound, message, "")
}

func conflict(c *gin.Context, message string) {
	writeError(c, http.StatusConflict, agentapi.CodeConflict, message, "")
}

// RequestIDHeader carries the ID of every request in the answer; the log
// lines of the request carry it as request_id.
const RequestIDHeader = "X-Request-Id"

const requestIDKey = "thinlab.requestID"

// requestID gives every request an ID, answered in X-Request-Id before
// the handler runs (so even a panic's answer has it).
func (s *Server) requestID(c *gin.Context) {
	id := xid.New().String()
	c.Set(requestIDKey, id)
	c.Header(RequestIDHeader, id)
	c.Next()
}

func requestIDOf(c *gin.Context) string { return c.GetString(requestIDKey) }

func internalMessage(c *gin.Context) string {
	return "internal error, request id " + requestIDOf(c)
}

// internalError logs the cause with the request ID and answers 500 with
// the ID only: the cause holds command lines, paths and stderr of storage
// and postgres commands, which are the host's business, not the caller's
// (DLE sends them; Thinlab does not, issue 8).
func (s *Server) internalError(c *gin.Context, err error) {
	s.log.Error("API request failed", "method", c.Request.Method, "route", c.FullPath(), "request_id", requestIDOf(c), "err", err)
	writeError(c, http.StatusInternalServerError, agentapi.CodeInternal, internalMessage(c), "")
}

// readJSON decodes an optional JSON body into v (DLE clients send no
// Content-Type, so none is required; unknown fields are ignored). It
// reports false after answering 400 when the body is not JSON.
func readJSON(c *gin.Context, v any) bool {
	raw, err := io.ReadAll(io.LimitReader(c.Request.Body, maxBody+1))
	if err != nil {
		badRequest(c, "", "could not read the request body: "+err.Error())
		return false
	}
	if len(raw) > maxBody {
		badRequest(c, "", fmt.Sprintf("the request body is larger than %d bytes", maxBody))
		return false
	}
	if strings.TrimSpace(string(raw)) == "" {
		return true
	}
	if err := json.Unmarshal(raw, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			badRequest(c, te.Field, fmt.Sprintf("%s: want a JSON %s, got %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value))
			return false
		}
		badRequest(c, "", "the request body is not JSON: "+err.Error())
		return false
	}
	return true
}

func jsonKind(goKind string) string {
	switch {
	case strings.HasPrefix(goKind, "int"), strings.HasPrefix(goKind, "uint"), strings.HasPrefix(goKind, "float"):
		return "number"
	case goKind == "bool":
		return "boolean"
	case goKind == "string":
		return "string"
	case goKind == "map", goKind == "struct":
		return "object"
	case goKind == "slice":
		return "array"
	}
	return goKind
}

// writeCloneError maps the clone manager's errors to statuses: bad fields
// 400 (naming the field), unknown clones 404, state conflicts 409.
func (s *Server) writeCloneError(c *gin.Context, err error) {
	var ve *clone.ValidationError
	switch {
	case errors.As(err, &ve):
		badRequest(c, ve.Field, ve.Error())
	case errors.Is(err, clone.ErrNotFound):
		notFound(c, err.Error())
	case errors.Is(err, clone.ErrExists):
		// DLE answers 400 for a duplicate ID.
		badRequest(c, "id", err.Error())
	case errors.Is(err, clone.ErrNoSnapshots):
		badRequest(c, "snapshot.id", err.Error())
	case errors.Is(err, clone.ErrProtected), errors.Is(err, clone.ErrNotReady), errors.Is(err, clone.ErrNoPorts), errors.Is(err, clone.ErrHasReplicas):
		conflict(c, err.Error())
	default:
		s.internalError(c, err)
	}
}

// labelSelector reads the repeated ?label= filter (k=v or k); a bad term
// answers 400 naming it.
func labelSelector(c *gin.Context) (labels.Selector, bool) {
	sel, err := labels.ParseSelector(c.QueryArray("label"))
	if err != nil {
		badRequest(c, "label", err.Error())
		return nil, false
	}
	return sel, true
}
