// Package protocodec encodes and decodes values of a type parameter that is
// a protobuf message pointer (e.g. *wrapperspb.BytesValue), for the host
// and the plugin sides of the gRPC transport. The codec's wire name is
// Name.
package protocodec

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Name is the codec's name on the wire.
const Name = "proto"

// Codec encodes and decodes T, a protobuf message pointer type.
type Codec[T any] struct {
	mt protoreflect.MessageType
}

// For returns the codec of T and true if T is a protobuf message pointer
// type; otherwise false.
func For[T any]() (Codec[T], bool) {
	var zero T
	m, ok := any(zero).(proto.Message)
	if !ok {
		return Codec[T]{}, false
	}
	return Codec[T]{mt: m.ProtoReflect().Type()}, true
}

// Marshal encodes v; a nil message encodes as an empty one.
func (c Codec[T]) Marshal(v T) ([]byte, error) {
	return proto.Marshal(any(v).(proto.Message))
}

// Unmarshal decodes data into a new T.
func (c Codec[T]) Unmarshal(data []byte) (T, error) {
	m := c.mt.New().Interface()
	if err := proto.Unmarshal(data, m); err != nil {
		var zero T
		return zero, fmt.Errorf("decoding %s: %w", c.mt.Descriptor().FullName(), err)
	}
	return m.(T), nil
}
