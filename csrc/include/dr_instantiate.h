/* dr_instantiate.h — include a template file (DR_INSTANTIATE) once per instance, defining its parameters before and
 * undefining them after, so no parameter leaks into the next instance.
 *
 * Storage types (the default): once per floating-point storage type. For each instance it defines DR_T (storage type), DR_LD(x)/DR_ST(x) (load to / store from the compute type),
 * DR_RT (compute type: float, or double for float64), DR_RS(name) (suffix of the compute type's shared math: _f,
 * _d) and DR_KS(name) (suffix of the instance: _f32, _f64, _f16, _bf16), and undefines them afterwards.
 *
 * One variant (DR_INSTANTIATE_VARIANT defined): the caller defines the variant's parameters, the file is included
 * once, and then every variant parameter is undefined: DR_RT, DR_KS(name), DR_VT, DR_VI, DR_VW, DR_ATTR, DR_VEXP,
 * DR_VMAX, DR_SEXP, DR_SLOG and the optional DR_RROWS, DR_VHMAX, DR_VHSUM, DR_VLOG, DR_VTR16, DR_SFMA (attention's CPU
 * kernels for one instruction set, attention_cpu.inc, document their meaning).
 *
 * No include guard: include it once per set of instances. */
#ifndef DR_INSTANTIATE
#error "define DR_INSTANTIATE as the file to instantiate"
#endif

#ifdef DR_INSTANTIATE_VARIANT
#include DR_INSTANTIATE
#undef DR_RT
#undef DR_KS
#undef DR_VT
#undef DR_VI
#undef DR_VW
#undef DR_ATTR
#undef DR_VEXP
#undef DR_VMAX
#undef DR_SEXP
#undef DR_SLOG
#undef DR_RROWS
#undef DR_VHMAX
#undef DR_VHSUM
#undef DR_VLOG
#undef DR_VTR16
#undef DR_SFMA
#undef DR_INSTANTIATE_VARIANT
#else

#define DR_T float
#define DR_LD(x) (x)
#define DR_ST(x) (x)
#define DR_RT float
#define DR_RS(name) name##_f
#define DR_KS(name) name##_f32
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#define DR_T double
#define DR_LD(x) (x)
#define DR_ST(x) (x)
#define DR_RT double
#define DR_RS(name) name##_d
#define DR_KS(name) name##_f64
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#define DR_T uint16_t
#define DR_LD(x) dr_f16_to_f32(x)
#define DR_ST(x) dr_f32_to_f16(x)
#define DR_RT float
#define DR_RS(name) name##_f
#define DR_KS(name) name##_f16
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS

#define DR_T uint16_t
#define DR_LD(x) dr_bf16_to_f32(x)
#define DR_ST(x) dr_f32_to_bf16(x)
#define DR_RT float
#define DR_RS(name) name##_f
#define DR_KS(name) name##_bf16
#include DR_INSTANTIATE
#undef DR_T
#undef DR_LD
#undef DR_ST
#undef DR_RT
#undef DR_RS
#undef DR_KS
#endif

#undef DR_INSTANTIATE
