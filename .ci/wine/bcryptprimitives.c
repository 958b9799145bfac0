/*
 * bcryptprimitives.dll for Wine 8, which does not ship it: Rust's std (and getrandom) import
 * ProcessPrng from it, so without this DLL no Rust test executable loads (STATUS_DLL_NOT_FOUND,
 * c0000135). ProcessPrng fills the buffer from advapi32's RtlGenRandom (SystemFunction036),
 * which Wine implements.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    /* RtlGenRandom takes a ULONG length: fill larger buffers in parts. */
    while (length > 0) {
        ULONG part = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, part)) {
            /* ProcessPrng is documented never to fail, and callers do not check: returning
             * with the buffer unfilled would hand them predictable bytes. */
            ExitProcess(0xC0000001); /* STATUS_UNSUCCESSFUL */
        }
        data += part;
        length -= part;
    }
    return TRUE;
}
