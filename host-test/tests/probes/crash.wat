;; A guest that counts its request-headers calls in a static, adds `x-calls: <count>` to each
;; request, and traps on its second call: for Envoy's failure policies (FAIL_CLOSED, FAIL_OPEN,
;; FAIL_RELOAD, where a new VM starts counting from 1 again).
(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-calls")
  (global $calls (mut i32) (i32.const 0))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.eq (global.get $calls) (i32.const 2)) (then unreachable))
    ;; the count as one digit at address 32
    (i32.store8 (i32.const 32) (i32.add (i32.const 48) (global.get $calls)))
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 32) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
  (func (export "proxy_on_tick") (param i32)))
