package mptrain

/*
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// LogLevel is how much the library reports; each level includes those before it. The zero
// value is LogDefault (LogInfo).
type LogLevel int

const (
	LogDefault LogLevel = iota
	LogOff
	LogError
	LogWarn
	LogInfo
	LogDebug
)

// cLogLevel is the header's MPT_LOG_* value of a level.
func (l LogLevel) cLogLevel() C.int32_t {
	switch l {
	case LogOff:
		return -1
	case LogError:
		return 0
	case LogWarn:
		return 1
	case LogDebug:
		return 3
	default:
		return 2
	}
}

func levelFromC(level C.int32_t) LogLevel {
	switch level {
	case 0:
		return LogError
	case 1:
		return LogWarn
	case 2:
		return LogInfo
	default: // levels a newer library may add are finer than these
		return LogDebug
	}
}

// logSink is what the library's user_data refers to, through a cgo.Handle. A panic in the
// callback is held and raised again once the library call has returned, never unwound
// through the library's frames.
type logSink struct {
	fn       func(level LogLevel, message string)
	panicked any
	failed   bool
}

// rethrow raises, on the caller's goroutine, a panic the callback raised during the call.
func (s *logSink) rethrow() {
	if s != nil && s.failed {
		p := s.panicked
		s.failed, s.panicked = false, nil
		panic(p)
	}
}

//export mptGoLog
func mptGoLog(userData unsafe.Pointer, level C.int32_t, message *C.char) C.int {
	sink := cgo.Handle(uintptr(userData)).Value().(*logSink)
	if sink.failed {
		return 0 // it panicked earlier in this call: leave it alone
	}
	text := C.GoString(message)
	func() {
		defer func() {
			if p := recover(); p != nil {
				sink.failed, sink.panicked = true, p
			}
		}()
		sink.fn(levelFromC(level), text)
	}()
	return 0
}
